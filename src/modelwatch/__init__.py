"""modelwatch: availability and latency monitor for AI model APIs."""

__version__ = "0.1.0"
