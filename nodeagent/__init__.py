"""nodeagent: one asyncio daemon per GPU node."""

__version__ = "0.1.0"
