"""xnli-serve: multilingual NLI (XLM-R variants) served with dynamic batching."""

__version__ = "0.1.0"
