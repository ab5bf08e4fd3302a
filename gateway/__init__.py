"""exec-gateway: stateful, sandboxed Python sessions over REST, WebSocket and Jupyter."""

__version__ = "0.1.0"
