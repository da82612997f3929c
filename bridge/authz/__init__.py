"""Chained authorization toward registry clients: who a client is, what the upstream lets it pull."""
