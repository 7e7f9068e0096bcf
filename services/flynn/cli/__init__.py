"""The ``flynn`` command-line client (developers' CLI)."""
