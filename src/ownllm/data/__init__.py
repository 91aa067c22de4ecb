"""Pipeline stage 1: raw files -> clean, deduplicated corpus -> token shards."""
