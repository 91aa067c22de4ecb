"""Which model a command loads from a run: one answer for sample, chat, serve (and eval, export).

    model = resolve_model(run_dir)                    # the chat model if the run has one, else the base model
    model = resolve_model(run_dir, stage="pretrain")  # or a stage, or checkpoint=a step directory
    model.path, model.stage, model.state, model.persona
    transformer = model.load("cuda")                  # eval mode, on the device

The checks are made here, once, before anything heavy is loaded: the stage has a
checkpoint; the run's tokenizer is the one the model was trained with; and a chat model
still belongs to the run's base model. `ownllm sft` records the pretraining checkpoint it
started from (its unique id and its name); after `ownllm pretrain --restart` (or `--resume`)
the latest pretraining is another model, and a chat model fine-tuned from the old one is
refused with the command that fixes it, instead of being served as if nothing had changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ownllm.core.errors import StaleArtifactError, UserError
from ownllm.model import Transformer
from ownllm.run.checkpoints import latest_checkpoint, load_model, read_state
from ownllm.run.rundir import RunDir
from ownllm.run.token_shards import tokenizer_hash

STAGES = ("sft", "pretrain")  # the default is the first that has a checkpoint


@dataclass(frozen=True)
class ResolvedModel:
    stage: str | None  # None for a checkpoint given by its path
    path: Path  # the step directory
    state: dict  # its state.json

    @property
    def persona(self) -> dict | None:
        """Who the chat model was trained to be (recorded by `ownllm sft`); None for a base model."""
        persona = self.state.get("persona")
        return persona if isinstance(persona, dict) else None

    def load(self, device: torch.device | str = "cpu") -> Transformer:
        return load_model(self.path, device)[0]


def resolve_model(
    run: str | Path | RunDir,
    stage: str | None = None,
    checkpoint: str | Path | None = None,
    check_tokenizer: bool = True,
) -> ResolvedModel:
    """The checkpoint to load; UserError (one line, with what to run) when there is none or it does not fit."""
    run_dir = run if isinstance(run, RunDir) else RunDir.open(run, create=False)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not (path / "state.json").is_file():
            raise UserError(f"{path} is not a checkpoint directory (no state.json)")
    else:
        stage, path = _latest(run_dir, stage)
        if stage == "sft":
            _check_base(run_dir, path)
    resolved = ResolvedModel(stage, path, read_state(path))
    if check_tokenizer:
        _check_tokenizer(run_dir, resolved)
    return resolved


def _latest(run_dir: RunDir, stage: str | None) -> tuple[str, Path]:
    for candidate in [stage] if stage else STAGES:
        path = latest_checkpoint(run_dir.checkpoints / candidate)
        if path is not None:
            return candidate, path
    wanted = stage or "pretrain"
    raise UserError(
        f"no {wanted} checkpoint: there is no checkpoint in {run_dir.checkpoints / wanted}; "
        f"train one with `ownllm {wanted} --run {run_dir.root}`"
    )


def _check_base(run_dir: RunDir, sft_path: Path) -> None:
    """Refuse a chat model fine-tuned from a pretraining checkpoint that is no longer the run's latest."""
    state = read_state(sft_path)
    base_name = state.get("base_checkpoint")
    if not base_name:
        return  # not fine-tuned from this run's pretraining (nothing to compare)
    latest = latest_checkpoint(run_dir.checkpoints / "pretrain")
    if latest is not None:
        latest_state = read_state(latest)
        if state.get("base_id") is not None:  # checkpoints written since ids exist
            same = latest_state.get("id") == state["base_id"]
        else:
            same = str(latest.relative_to(run_dir.root)) == base_name
        if same:
            return
    now = f"is now {latest.relative_to(run_dir.root)}" if latest is not None else "has no checkpoint"
    raise StaleArtifactError(
        f"the chat model {sft_path.relative_to(run_dir.root)} was fine-tuned from {base_name}, but the run's "
        f"pretraining {now}; fine-tune the new base with `ownllm sft --run {run_dir.root} --restart` "
        f"(or use --stage pretrain)"
    )


def _check_tokenizer(run_dir: RunDir, resolved: ResolvedModel) -> None:
    expected = resolved.state.get("tokenizer_hash")
    if expected and tokenizer_hash(run_dir.tokenizer) != expected:
        raise StaleArtifactError(
            f"{resolved.path} was trained with another tokenizer than {run_dir.tokenizer}; "
            f"retrain, or use the matching run"
        )
