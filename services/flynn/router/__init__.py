"""router: see docs/architecture.md (not built yet)."""
