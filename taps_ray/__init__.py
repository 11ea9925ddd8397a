"""taps-ray: task-aware speculative decoding on Ray."""

__version__ = "0.1.0"
