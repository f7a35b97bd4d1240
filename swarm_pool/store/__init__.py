"""The shared SQLite event store; knows nothing about processes."""
