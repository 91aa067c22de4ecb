"""A conversation with the assistant: history, context window, system prompt and tools, on top of the engine."""
