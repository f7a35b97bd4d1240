"""The gateway: one OpenCode-compatible URL in front of the whole pool (see ``app``).

Room: gateway.
"""
