"""The ``stepwise`` client verbs for people at a terminal, built on ``stepwise.client``."""
