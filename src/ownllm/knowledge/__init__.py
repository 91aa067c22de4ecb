"""The knowledge base: documents chunked, indexed and searched (docs/architecture.md)."""
