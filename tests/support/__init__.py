"""Shared test infrastructure: real servers, fault injection, waiting with deadlines."""
