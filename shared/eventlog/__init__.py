"""The durable event log and run records, behind one small interface with two backends."""

from shared.eventlog.base import EventLog, Transition, encode_body

__all__ = ["EventLog", "Transition", "encode_body"]
