"""Sidecar agent (filled in by the server-agent issue)."""
