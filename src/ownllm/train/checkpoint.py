"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

    checkpoints/<stage>/
      step_000200/
        model.safetensors    the weights (fp32), loadable by anything that reads safetensors
        optimizer.pt         AdamW moments and step counts (and the fp16 gradient scaler, if any)
        rng.pt               torch (CPU and CUDA), numpy and Python random generator states
        state.json           step, tokens seen, planned steps, data-loader position, elapsed time,
                             the model and training settings, the tokenizer hash
      latest                 the name of the newest complete step directory

A step directory is built under a temporary name and renamed into place, then `latest` is
replaced atomically: a process killed at any moment leaves `latest` pointing at a complete
checkpoint. Older step directories beyond the last `keep` are deleted afterwards.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ownllm.errors import UserError
from ownllm.fsutil import atomic_directory, atomic_write_text, read_json

FORMAT = "ownllm.checkpoint"
VERSION = 1
STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(
    stage_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict,
    scaler: torch.amp.GradScaler | None = None,
    keep: int = 3,
) -> Path:
    stage_dir = Path(stage_dir)
    path = stage_dir / step_name(step)
    with atomic_directory(path) as tmp:
        weights = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": FORMAT, "step": str(step)})
        if optimizer is not None:
            torch.save(
                {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None},
                tmp / "optimizer.pt",
            )
        torch.save(rng_state(), tmp / "rng.pt")
        meta = {"format": FORMAT, "version": VERSION, "step": step, **state}
        (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    atomic_write_text(stage_dir / "latest", path.name + "\n")
    _prune(stage_dir, keep=keep, current=path.name)
    return path


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The step directory `latest` names, or None when the stage has no checkpoint yet."""
    pointer = Path(stage_dir) / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = pointer.parent / name
    if not STEP_DIR.match(name) or not (path / "state.json").is_file():
        raise UserError(f"{pointer} names {name!r}, which is not a complete checkpoint; delete {pointer} and resume")
    return path


def read_state(path: Path) -> dict:
    meta = read_json(Path(path) / "state.json", "checkpoint state")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{path} is not an ownllm checkpoint of version {VERSION}")
    return meta


def load_weights(path: Path, model: torch.nn.Module) -> None:
    file = Path(path) / "model.safetensors"
    try:
        weights = load_file(file)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read {file} ({e}); the checkpoint is damaged, use an earlier one") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{file} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_training_state(
    path: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
) -> None:
    """Restore the optimizer, the gradient scaler and every random generator from a step directory."""
    path = Path(path)
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _prune(stage_dir: Path, keep: int, current: str) -> None:
    """Delete step directories beyond the newest `keep`, and half-written ones left by a killed process."""
    for leftover in stage_dir.glob(".step_*"):  # .tmp (being built) or .old-PID (being replaced)
        shutil.rmtree(leftover, ignore_errors=True)
    steps = sorted(
        (p for p in stage_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=lambda p: int(p.name[5:])
    )
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def load_model(path: Path, device: torch.device | str = "cpu"):
    """The Transformer saved in step directory `path`, in eval mode, and the checkpoint's state."""
    from ownllm.model import ModelConfig, Transformer

    path = Path(path)
    if not (path / "state.json").is_file():
        raise UserError(f"{path} is not a checkpoint directory (no state.json)")
    state = read_state(path)
    model = Transformer(ModelConfig.from_dict(state["model_config"]))
    load_weights(path, model)
    return model.to(device).eval(), state
