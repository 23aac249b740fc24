"""Stepwise's Python client: ``from stepwise.client import Client, AsyncClient``."""

from stepwise.client import AsyncClient, Client
from stepwise.errors import ApiError, CannotConnect, StepwiseError

__all__ = ["ApiError", "AsyncClient", "CannotConnect", "Client", "StepwiseError"]
