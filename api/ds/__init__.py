"""Durable Streams (the open protocol, PROTOCOL.md v1) under ``/ds/``, on the event log."""
