"""Health and work integration hub: the runtime (settings, broker, pipeline, outbox, API, CLI)."""

__version__ = "0.1.0"
