"""Texts to vectors with the run's own embedder (checkpoints/embed/, made by `ownllm embed train`).

    embedder = TextEmbedder.for_run("runs/demo")   # None when the run has no embedder
    vectors = embedder.embed(["a text", ...])      # float32 (N, dim), unit length
    embedder.id                                    # the checkpoint's unique id: which vectors go together

Texts are embedded in batches of similar length (sorted, so little padding is computed) and cut
at the embedder's context. One lock: the server's threads share one model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ownllm.core.errors import StaleArtifactError
from ownllm.run import checkpoints
from ownllm.run.token_shards import tokenizer_hash
from ownllm.tokenizer import Tokenizer
from ownllm.train.embedding import STAGE, encode_texts, load_embedder

BATCH = 32


class TextEmbedder:
    def __init__(self, path: Path, tokenizer_dir: Path, device: torch.device | str = "cpu"):
        self.model, state = load_embedder(path, device)
        self.tokenizer = Tokenizer.load(tokenizer_dir)
        if state.get("tokenizer_hash") != tokenizer_hash(tokenizer_dir):
            raise StaleArtifactError(f"{path} was trained with another tokenizer; retrain it with `ownllm embed train`")
        self.id: str = state.get("id") or path.name
        self.dim: int = self.model.dim
        self.max_tokens = self.model.config.max_seq_len
        self.device = torch.device(device)
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, run_dir: str | Path, device: torch.device | str = "cpu") -> TextEmbedder | None:
        run_dir = Path(run_dir)
        path = checkpoints.latest_checkpoint(run_dir / "checkpoints" / STAGE)
        return None if path is None else cls(path, run_dir / "tokenizer", device)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode_ordinary(text))

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit vectors (len(texts), dim); progress(n) is called after each batch of n texts."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), BATCH):
                rows = order[start : start + BATCH]
                tokens, lengths = encode_texts(self.tokenizer, [texts[i] for i in rows], self.max_tokens, self.device)
                out[rows] = self.model.encode(tokens, lengths).cpu().numpy()
                if progress is not None:
                    progress(len(rows))
        return out
