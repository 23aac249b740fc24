"""Persistence: ORM models, the database engine, and every query Stepwise makes."""
