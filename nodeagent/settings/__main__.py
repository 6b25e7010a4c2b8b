"""``python -m nodeagent.settings``: print docs/configuration.md."""

from nodeagent.settings.docs import render_docs

print(render_docs(), end="")
