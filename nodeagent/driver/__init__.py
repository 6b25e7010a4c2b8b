"""Driver lifecycle: root discovery, modules, versions, device nodes, validation files, readiness."""
