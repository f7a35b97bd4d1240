"""Git: the runner, worktrees and slots, diff and merge."""
