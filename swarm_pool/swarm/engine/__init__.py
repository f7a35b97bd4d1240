"""The engine loop: dispatch, watch, reconcile, several hosts.

Room: swarm.engine.
"""
