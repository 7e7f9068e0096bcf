"""The controller: the platform's REST API on PostgreSQL (see docs/controller.md)."""
