"""trajforge: verified, validated training data for LLM agents."""

__version__ = "0.1.0"
