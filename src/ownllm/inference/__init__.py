"""Generating text: the engine (KV cache, batching, streaming), its sampling rules and detokenizer, `ownllm sample`."""
