"""Everything that knows OpenCode.

Room: opencode.
"""
