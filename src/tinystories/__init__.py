"""tinystories: train, sample, serve, evaluate and interpret tiny story-writing language models."""

__version__ = "0.1.0"
