"""The engine loop: dispatch, watch, reconcile, several hosts."""
