"""ownllm: from a folder of raw text to your own AI assistant, with no third-party model anywhere."""

__version__ = "0.1.0"
