"""The agent workflow, built on pool + store + opencode.

Room: swarm.
"""
