"""SQL for each resource, one module per resource. Every write emits its event on the same Tx."""
