"""The run directory: the contract between pipeline stages.

Stages never call each other's internals to pass data. Each reads the artifacts of the
earlier stage from a run directory and writes its own:

    runs/<name>/
      config.toml        resolved settings of every stage that ran
      corpus/            cleaned document shards + manifest.json        (ownllm data)
      tokenizer/         tokenizer.json                                  (ownllm tokenizer)
      tokens/            train/val token shards + meta.json              (ownllm tokenize)
      checkpoints/       <stage>/step_NNNNNN/ + latest                   (ownllm pretrain, sft)
      metrics.jsonl      one JSON object per logged step / eval
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_write_text


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> RunDir:
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise UserError(f"--run {root} exists and is not a directory")
        if create:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create run directory {root}: {e.strerror}") from None
        elif not root.is_dir():
            raise UserError(f"run directory {root} does not exist; start with `ownllm data --run {root}`")
        return cls(root)

    # Artifact locations, by convention. Stage commands accept explicit paths that override these.
    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    def read_config(self) -> dict:
        if not self.config_file.exists():
            return {}
        try:
            return tomllib.loads(self.config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.config_file} is not valid TOML ({e}); fix or delete it") from None

    def record_config(self, stage: str, settings: dict) -> None:
        """Save the resolved settings of `stage` into config.toml (other stages' sections are kept)."""
        config = self.read_config()
        config[stage] = _toml_safe(settings)
        atomic_write_text(self.config_file, tomli_w.dumps(config))

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (a line is written whole or not at all in practice)."""
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _toml_safe(value):
    """TOML has no null and needs string keys; drop Nones and stringify paths."""
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value
