"""The message broker (run requests, completions, dead letters) behind one small interface."""

from shared.broker.base import Ack, Broker, Consumer, Delivery, Handler, Outcome, Reject, Retry

__all__ = ["Ack", "Broker", "Consumer", "Delivery", "Handler", "Outcome", "Reject", "Retry"]
