"""The outbox relay: reports committed usage facts to Stripe meters exactly once."""

__version__ = "0.1.0"
