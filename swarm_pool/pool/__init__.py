"""The process manager: a supervised pool of opencode servers; knows nothing about agents.

Room: pool (above git and opencode, below swarm).
"""
