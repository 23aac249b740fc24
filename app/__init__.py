"""Stepwise: a durable HTTP workflow-execution service."""

__version__ = "0.1.0"
