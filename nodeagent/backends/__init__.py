"""The only code that touches hardware or the host: NVML, files under a Root, subprocesses, sockets."""
