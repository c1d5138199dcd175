"""Mixing networks: combine the agents' chosen Q-values (and the state) into a joint value."""
