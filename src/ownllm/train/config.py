"""Every training setting in one dataclass, named presets, and `--set key=value` overrides.

A preset is a small dict of changes to the defaults; `--set` changes any field, with the
value checked against the field's type. The resolved settings are saved to the run's
config.toml and inside every checkpoint, so a run can be reproduced and resumed exactly.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

from ownllm.core.errors import UserError
from ownllm.core.settings import dataclass_from_dict
from ownllm.model.config import ModelConfig

SCHEDULES = ("cosine", "wsd")
# optimizer setting -> what training prints (train/optim.py builds them)
OPTIMIZERS = {"adamw": "AdamW", "muon": "Muon (the blocks' matrices) + AdamW (embeddings, output, gains)"}
DATA_ORDERS = ("random", "sequential")
DTYPES = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab_size is taken from the token shards

    # Data: each optimizer step sees batch_tokens tokens, in micro-batches of micro_batch sequences per process.
    seq_len: int = 256
    micro_batch: int = 16  # 0 (--set micro_batch=auto): the largest that fits in memory, chosen at start
    batch_tokens: int = 4096  # a multiple of micro_batch * seq_len * processes; the rest is gradient accumulation
    data_order: str = "random"  # random: shuffled non-overlapping windows per epoch; sequential: in file order

    # Optimisation
    steps: int = 1000  # optimizer steps; replaced by a plan when time_budget is set
    time_budget: float = 0.0  # seconds of training; > 0 plans `steps` to finish the schedule on time
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine, or wsd (warmup, stable, then a linear decay over decay_fraction)
    decay_fraction: float = 0.2
    optimizer: str = "adamw"  # adamw, or muon (Muon for the blocks' matrices, AdamW for the rest; train/muon.py)
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off

    # Watching and saving
    log_every: int = 1
    eval_every: int = 100
    eval_tokens: int = 32768  # validation tokens per evaluation (the same windows every time)
    eval_tasks: str = ""  # benchmark tasks scored at every evaluation too, e.g. "hellaswag,arc_easy" (ownllm eval's)
    eval_task_limit: int = 200  # items of each of those tasks (the first ones: the same items every time)
    sample_every: int = 100
    sample_tokens: int = 48
    sample_prompts: str = "Once upon a time|The little dog"  # separated by |
    checkpoint_every: int = 100
    keep_checkpoints: int = 3

    # Machine
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 on CUDA if supported, else fp16; fp32 on CPU (bf16 only when asked)
    compile: bool = False  # torch.compile the model (slow start, faster steps)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    threads: int = 0  # CPU threads for PyTorch; 0 keeps PyTorch's default
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def grad_accum(self) -> int:
        return self.accumulation(1)

    def accumulation(self, world: int) -> int:
        """Micro-batches per optimizer step on each of `world` processes, so that a step is batch_tokens tokens."""
        per_step = self.tokens_per_micro_batch * world
        if self.batch_tokens % per_step:
            raise UserError(
                f"batch_tokens={self.batch_tokens} is not a multiple of micro_batch*seq_len*processes="
                f"{self.micro_batch}*{self.seq_len}*{world}={per_step}; set batch_tokens to a multiple of it "
                f"or a smaller micro_batch"
            )
        return self.batch_tokens // per_step

    @property
    def prompts(self) -> list[str]:
        return self.sample_prompts.split("|")

    def validate(self) -> TrainConfig:
        self.model.validate()
        positive = (
            "seq_len",
            "batch_tokens",
            "steps",
            "log_every",
            "eval_tokens",
            "eval_task_limit",
            "keep_checkpoints",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be at least 1")
        if self.micro_batch < 0:
            raise UserError(f"micro_batch={self.micro_batch} must be a positive number, or auto")
        for name in ("eval_every", "sample_every", "sample_tokens", "checkpoint_every", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}={getattr(self, name)} must be 0 (off) or more")
        if self.seq_len > self.model.max_seq_len:
            raise UserError(
                f"seq_len={self.seq_len} is longer than the model's position limit "
                f"max_seq_len={self.model.max_seq_len}; "
                f"lower seq_len or raise model.max_seq_len"
            )
        if self.batch_tokens % self.seq_len:
            raise UserError(f"batch_tokens={self.batch_tokens} is not a multiple of seq_len={self.seq_len}")
        if self.micro_batch:  # 0 is decided at start (auto)
            self.accumulation(1)
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"lr={self.lr} must be positive and min_lr_ratio={self.min_lr_ratio} in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise UserError(f"decay_fraction={self.decay_fraction} must be in (0, 1]")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("beta1 and beta2 must be in [0, 1), weight_decay and grad_clip at least 0")
        if self.time_budget < 0:
            raise UserError(f"time_budget={self.time_budget} must be 0 (off) or a positive duration")
        for name, allowed in (
            ("schedule", SCHEDULES),
            ("optimizer", OPTIMIZERS),
            ("data_order", DATA_ORDERS),
            ("dtype", DTYPES),
            ("device", DEVICES),
        ):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d.get("model", {}))
        return dataclass_from_dict(cls, d, "training")


# Each preset changes a few defaults. Model keys are prefixed with "model.".
PRESETS: dict[str, dict] = {
    # Seconds on a laptop: for tests and for trying the commands.
    "tiny": {
        "model.n_layers": 2,
        "model.d_model": 64,
        "model.n_heads": 4,
        "model.max_seq_len": 64,
        "seq_len": 64,
        "micro_batch": 8,
        "batch_tokens": 512,
        "steps": 40,
        "lr": 3e-3,
        "warmup_steps": 5,
        "eval_every": 20,
        "eval_tokens": 2048,
        "sample_every": 20,
        "sample_tokens": 16,
        "checkpoint_every": 20,
    },
    # The default demo: about ten minutes on two CPU cores with the bundled corpus (~2M tokens).
    # 3 x 192 won the sweep in docs/benchmarks.md: in minutes on a CPU, more steps beat a wider model.
    # optimizer=muon, lr=8e-3 reaches 0.057 fewer bits per byte in the 10 minutes, but the chat model
    # fine-tuned from it answered sums right in 3-64% of samples instead of 92% (same page): not the default.
    "cpu": {
        "model.n_layers": 3,
        "model.d_model": 192,
        "model.n_heads": 3,
        "model.max_seq_len": 256,
        "seq_len": 256,
        "micro_batch": 16,
        "batch_tokens": 4096,
        "time_budget": 600.0,
        "lr": 2e-3,
        "warmup_steps": 20,
        "eval_every": 100,
        "eval_tokens": 32768,
        "sample_every": 100,
        "checkpoint_every": 100,
    },
    # GPT-2-small class for one GPU, bf16: 12 layers, 768 wide, 1024 context, tied embeddings
    # (124M parameters with GPT-2's 50k vocabulary, 92M with the demo's 8192).
    "gpu-small": {
        "model.n_layers": 12,
        "model.d_model": 768,
        "model.n_heads": 12,
        "model.max_seq_len": 1024,
        "model.tie_embeddings": True,
        "seq_len": 1024,
        "micro_batch": 32,
        "batch_tokens": 262144,
        "steps": 5000,
        "lr": 6e-4,
        "warmup_steps": 200,
        "eval_every": 250,
        "eval_tokens": 524288,
        "sample_every": 500,
        "sample_tokens": 64,
        "checkpoint_every": 500,
        "compile": True,
        "log_every": 10,
    },
}


def load_config(preset: str, overrides: Sequence[str] = (), time_budget: str | None = None) -> TrainConfig:
    """The preset's settings, then each `key=value` override, then the time budget; validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = TrainConfig(preset=preset)
    for key, value in PRESETS[preset].items():
        config = set_value(config, key, value)
    config = apply_overrides(config, overrides)
    if time_budget is not None:
        config.time_budget = parse_duration(time_budget)
    return config.validate()


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not key=value (for example --set lr=3e-4)")
        config = set_value(config, key.strip(), text.strip())
    return config


def set_value(config: TrainConfig, key: str, value) -> TrainConfig:
    """A copy of config with `key` (a field name, "model.<field>", or a model field's bare name) set."""
    train_fields = {f.name for f in fields(TrainConfig)} - {"model"}
    model_fields = {f.name for f in fields(ModelConfig)}
    name = key.removeprefix("model.")
    in_model = key.startswith("model.") or (key not in train_fields and key in model_fields)
    if in_model and name in model_fields:
        if name == "vocab_size":
            raise UserError("vocab_size comes from the tokenizer; train a tokenizer with another --vocab-size instead")
        hint = typing.get_type_hints(ModelConfig)[name]
        return replace(config, model=replace(config.model, **{name: _convert(key, value, hint)}))
    if not in_model and key in train_fields:
        if key == "time_budget":
            return replace(config, time_budget=parse_duration(value))
        if key == "micro_batch" and isinstance(value, str) and value.strip().lower() == "auto":
            return replace(config, micro_batch=0)
        hint = typing.get_type_hints(TrainConfig)[key]
        return replace(config, **{key: _convert(key, value, hint)})
    names = sorted(train_fields) + sorted(f"model.{n}" for n in model_fields)
    close = difflib.get_close_matches(key, names, n=3)
    suggestion = f"; did you mean {' or '.join(close)}?" if close else f"; known settings: {', '.join(names)}"
    raise UserError(f"unknown setting {key!r}{suggestion}")


def _convert(key: str, value, hint):
    """Check or parse a value for a field annotated `hint` (int, float, bool, str, or X | None)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            if base is bool:
                if text.lower() in ("true", "yes", "on", "1"):
                    return True
                if text.lower() in ("false", "no", "off", "0"):
                    return False
                raise ValueError
            if base is int:
                number = float(text)  # accepts 1e3 and 1_000
                if not number.is_integer():
                    raise ValueError
                return int(number)
            if base is float:
                number = float(text)
                if not math.isfinite(number):
                    raise ValueError
                return number
            return text
        except ValueError:
            kind = {bool: "true or false", int: "a whole number", float: "a number"}[base]
            raise UserError(f"--set {key}={value!r}: expected {kind}") from None
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise UserError(f"setting {key}={value!r}: expected {base.__name__}")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text) -> float:
    """Seconds in "90", "90s", "10m", "1h30m", "1.5h"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(s)
        except ValueError:
            parts = _DURATION.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise UserError(f"time budget {text!r} is not a duration like 90s, 10m or 1h30m") from None
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds < 0 or not math.isfinite(seconds):
        raise UserError(f"time budget {text!r} must be a positive duration")
    return seconds
