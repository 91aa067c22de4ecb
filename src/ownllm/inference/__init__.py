"""Generating text with a trained model (simple sampling now; the fast engine comes later)."""
