"""The composition root of voice-search: settings, the CLI and the HTTP service."""

__version__ = "0.1.0"
