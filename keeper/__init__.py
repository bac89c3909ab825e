"""keeper: follows payment-stream, escrow and usage contracts and keeps them settled."""

__version__ = "0.1.0"
