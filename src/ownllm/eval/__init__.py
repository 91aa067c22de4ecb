"""Evaluation: bits per byte and perplexity (more benchmarks come with later stages)."""
