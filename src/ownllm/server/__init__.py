"""`ownllm serve`: an OpenAI-compatible HTTP API, the chat page, and conversations kept in SQLite."""
