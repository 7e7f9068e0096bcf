"""flynn-host: the per-host agent (host API :1113; later jobs as transient units and volumes)."""
