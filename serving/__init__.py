"""Model server (filled in by the serving-runtime issue)."""
