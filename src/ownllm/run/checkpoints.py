"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

    checkpoints/<stage>/
      step_000200/
        model.safetensors    the weights (fp32), loadable by anything that reads safetensors
        optimizer.pt         AdamW moments and step counts (and the fp16 gradient scaler, if any)
        rng.pt               torch (CPU and CUDA), numpy and Python random generator states
        state.json           step, a unique id, tokens seen, planned steps, data-loader position, elapsed
                             time, number of processes, the model and training settings, the tokenizer hash
      latest                 the name of the newest complete step directory

A step directory is built under a temporary name and renamed into place, then `latest` is
replaced atomically: a process killed at any moment leaves `latest` pointing at a complete
checkpoint. Older step directories beyond the last `keep` are deleted afterwards.

A checkpoint is always whole, whatever wrote it: under FSDP every process sends its shards to
rank 0, which writes the full weights and optimizer state (the optimizer's keyed by parameter
name). So any number of processes, sharded or not, can continue it; each reads the same files.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_directory, atomic_write_text, read_json
from ownllm.model import ModelConfig, Transformer

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
    """Save from a single process (an unsharded model)."""
    weights, optimizer_state = gather_state(model, optimizer)
    return write_checkpoint(stage_dir, step, weights, optimizer_state, state, scaler, keep)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP has split the model's parameters among processes."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Whole weights and optimizer state on the CPU. Under FSDP every process must call this, and only
    rank 0 receives them (the others get empty dicts)."""
    if not is_sharded(model):
        weights = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
        return weights, optimizer.state_dict() if optimizer is not None else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    return weights, get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None


def write_checkpoint(
    stage_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict | None,
    state: dict,
    scaler: torch.amp.GradScaler | None = None,
    keep: int = 3,
) -> Path:
    stage_dir = Path(stage_dir)
    path = stage_dir / step_name(step)
    with atomic_directory(path) as tmp:
        weights = {name: t.contiguous() for name, t in weights.items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": FORMAT, "step": str(step)})
        if optimizer_state is not None:
            torch.save(
                {"optimizer": optimizer_state, "scaler": scaler.state_dict() if scaler else None},
                tmp / "optimizer.pt",
            )
        torch.save(rng_state(), tmp / "rng.pt")
        # A name can come back (`pretrain --restart` writes step_000100 again); the id never does,
        # so a chat model can tell whether the base it was fine-tuned from is still the latest.
        meta = {"format": FORMAT, "version": VERSION, "step": step, "id": uuid.uuid4().hex, **state}
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
        weights: dict[str, Any] = load_file(file)  # Any: set_model_state_dict wants its own value type
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read {file} ({e}); the checkpoint is damaged, use an earlier one") from None
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise UserError(f"{file} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if is_sharded(model):  # each process keeps its own shard of the whole tensors
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(weights)


def load_training_state(
    path: Path,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    model: torch.nn.Module | None = None,
) -> None:
    """Restore the optimizer, the gradient scaler and every random generator from a step directory.

    The optimizer state is keyed by parameter number when one process wrote it, by parameter name
    when FSDP did; `model` (needed for names and for shards) lets either continue the other.
    """
    path = Path(path)
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    by_name = any(isinstance(key, str) for key in saved["optimizer"]["state"])
    if model is None or not (by_name or is_sharded(model)):
        optimizer.load_state_dict(saved["optimizer"])
    else:
        state = saved["optimizer"] if by_name else _keyed_by_name(saved["optimizer"], optimizer, model)
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=is_sharded(model)))
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))


def _keyed_by_name(saved: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """An optimizer state dict keyed by parameter number turned into one keyed by parameter name.

    Numbers count the parameters of the optimizer's groups in order; the same optimizer built
    for the same model (build_optimizer) has them in the same order.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [{**group, "params": [order[i] for i in group["params"]]} for group in saved["param_groups"]]
    return {"state": {order[i]: value for i, value in saved["state"].items()}, "param_groups": groups}


def rng_state() -> dict:
    """The random generators of this process. Every training process draws the same numbers (same seed,
    same operations), so rank 0's state is every rank's; of CUDA's, the current device's."""
    # The legacy tuple (numpy's default); the stubs' overloads pick the dict form.
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
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


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[Transformer, dict]:
    """The Transformer saved in step directory `path`, in eval mode, and the checkpoint's state."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise UserError(f"{path} is not a checkpoint directory (no state.json)")
    state = read_state(path)
    model = Transformer(ModelConfig.from_dict(state["model_config"]))
    load_weights(path, model)
    return model.to(device).eval(), state
