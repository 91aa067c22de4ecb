"""`ownllm embed`: the run's own text embedder, made from its pretrained transformer.

    ownllm embed train --run runs/demo                 # the cpu preset: 600 steps, a few minutes
    ownllm embed train --run runs/demo --set steps=2000 --dim 384
    ownllm embed train --run runs/demo --resume
    ownllm embed encode --run runs/demo "a text" "another text"   # similarities, to try it

Training (train/embedding.py) turns the latest pretraining checkpoint into an embedder trained
contrastively on pairs made from the run's own corpus and generated questions, with the same
runner as pretraining and fine-tuning, and writes checkpoints/embed/. The knowledge base then
embeds its passages with it (`ownllm kb reindex` for passages added before), and the safety
classifier of the guardrail is trained on its vectors (`ownllm guardrail train`).
"""

from __future__ import annotations

import argparse

from ownllm.commands.common import add_run_argument, add_training_arguments
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.run import RunDir
from ownllm.train.embedding import DEFAULT_DIM, EMBED_PRESETS, STAGE, EmbeddingTraining, embed_config
from ownllm.train.runner import check_start, check_tokenizer, latest_pretrained, run_stage


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train the embedder from the pretrained model")
    add_training_arguments(
        train,
        list(EMBED_PRESETS),
        default="cpu",
        preset_help="starting settings: tiny (seconds), cpu (600 steps, a few minutes), gpu-small",
        set_help="override a training setting, e.g. --set steps=2000 --set lr=3e-4 (repeatable)",
        resume_help="continue from the latest embedding checkpoint",
        restart_help="delete the embedding checkpoints and start over",
    )
    train.add_argument("--dim", type=int, default=DEFAULT_DIM, help="embedding size (default: %(default)s)")
    encode = actions.add_parser("encode", help="embed texts and print their cosine similarities")
    add_run_argument(encode)
    encode.add_argument("texts", nargs="+", metavar="TEXT")


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    if args.action == "encode":
        return _encode(run_dir, args.texts)
    if args.resume:
        start = check_start(run_dir, STAGE, args.resume, args.restart, args.time_budget)
        state = start.saved
        assert state is not None
        from ownllm.train.config import apply_overrides  # lazy: only for --resume

        config = apply_overrides(start.saved_config, args.overrides)
        base, base_id, dim = run_dir.root / state["base_checkpoint"], state.get("base_id"), state["embed_dim"]
    else:
        if args.dim < 8:
            raise UserError(f"--dim {args.dim} is too small; use at least 8 (the default is {DEFAULT_DIM})")
        base, state = latest_pretrained(run_dir)
        base_id, dim = state.get("id"), args.dim
        from ownllm.model import ModelConfig  # lazy: only for a new run

        config = embed_config(
            args.preset, ModelConfig.from_dict(state["model_config"]), args.overrides, args.time_budget
        )
        start = check_start(run_dir, STAGE, args.resume, args.restart, args.time_budget)
    check_tokenizer(run_dir, state)
    status = run_stage(EmbeddingTraining(run_dir, base, base_id, dim, args.resume), run_dir, config, start)
    if status == 0 and (run_dir.root / "knowledge.db").is_file():
        say(f"the knowledge base's passages need the new vectors: `ownllm kb reindex --run {run_dir.root}`")
    return status


def _encode(run_dir: RunDir, texts: list[str]) -> int:
    from ownllm.knowledge.embeddings import TextEmbedder  # lazy: loads torch and the model

    embedder = TextEmbedder.for_run(run_dir.root)
    if embedder is None:
        raise UserError(f"{run_dir.root} has no embedder yet; run `ownllm embed train --run {run_dir.root}`")
    vectors = embedder.embed(texts)
    similarity = vectors @ vectors.T
    for i, text in enumerate(texts):
        shown = text if len(text) <= 60 else text[:57] + "..."
        print(f"[{i}] {shown}")
        print("    " + " ".join(f"{similarity[i, j]:+.3f}" for j in range(len(texts))))
    return 0
