"""Everything that knows OpenCode."""
