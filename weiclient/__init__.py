"""WeiClient SDK (filled in by the client issue)."""
