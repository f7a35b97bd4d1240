"""Plans: a TOML DAG of beads, and the runner that drives one.

Room: swarm.plans.
"""
