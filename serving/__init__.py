"""The composition root of voice-search: settings, the CLI and (later) the HTTP service."""
