"""Embedding training as a training stage: the pretrained transformer becomes a text embedder.

No labelled data and no third-party model: the pairs of texts that belong together are made from
the run's own corpus and from the generated conversations, four kinds in every batch:

    sentence  -> its passage   one sentence taken out of a passage, and the rest (the inverse cloze
                               task: a sentence is a stand-in for a question about its passage)
    passage   -> next passage  neighbouring passages of one document (same people, places, topic)
    question  -> passage       made-up facts and a question about one of them (chatformat/generated.py)
    passage   -> itself        the same text twice, told apart only by dropout (SimCSE)

A batch is drawn afresh for every step from (seed, step, process), so the loader's state is a
step count and a resumed run sees the batches it would have seen. It is judged on pairs of the
same kinds built from the corpus's validation split and another seed: the contrastive loss, and
how often a text finds its partner first among all the held-out partners (recall@1).
Checkpoints go to checkpoints/embed/ with the embedding size and the base checkpoint's id.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ownllm.chatformat.generated import fact_passage
from ownllm.core.console import say
from ownllm.core.device import Precision
from ownllm.core.errors import UserError
from ownllm.model import ModelConfig
from ownllm.model.embedder import Embedder
from ownllm.run import RunDir, checkpoints
from ownllm.run.corpus_shards import iter_documents
from ownllm.run.token_shards import open_tokens, tokenizer_hash
from ownllm.tokenizer import Tokenizer
from ownllm.train.config import PRESETS, TrainConfig, apply_overrides, parse_duration, set_value
from ownllm.train.distributed import Distributed
from ownllm.train.runner import StageParts
from ownllm.train.trainer import Hooks, Trainer

STAGE = "embed"
# A step is micro_batch pairs (2 x micro_batch texts); seq_len is the longest text kept, in tokens.
EMBED_PRESETS: dict[str, dict] = {
    "tiny": {"steps": 20, "lr": 1e-3, "warmup_steps": 2, "micro_batch": 8, "seq_len": 32, "eval_every": 10},
    "cpu": {"steps": 400, "lr": 5e-4, "warmup_steps": 20, "micro_batch": 64, "seq_len": 128, "eval_every": 100},
    "gpu-small": {"steps": 2000, "lr": 2e-4, "warmup_steps": 100, "micro_batch": 256, "seq_len": 256},
}  # steps, not a time budget: the same embedder wherever it is trained
DEFAULT_DIM = 256
DROPOUT = 0.1  # the noise that tells the two views of one passage apart
KINDS = {"sentence": 0.4, "neighbour": 0.25, "question": 0.25, "same": 0.1}
PASSAGE_CHARS = 600  # passages are whole sentences up to about this long, as `ownllm kb add` makes them
MAX_PASSAGES = 50_000  # read from the corpus's training split: plenty of pairs for a few thousand steps
EVAL_PAIRS = 256
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def embed_config(preset: str, model_config: ModelConfig, overrides: list[str], time_budget: str | None) -> TrainConfig:
    """The pretraining preset's machine settings, embedding training's changes, then --set."""
    config = TrainConfig(preset=preset)
    for key, value in {**PRESETS[preset], **EMBED_PRESETS[preset]}.items():
        if not key.startswith("model."):
            config = set_value(config, key, value)
    config.sample_every, config.checkpoint_every, config.time_budget = 0, max(config.eval_every, 50), 0.0
    config = replace(config, model=replace(model_config, dropout=DROPOUT))
    config = apply_overrides(config, overrides)
    if replace(config.model, dropout=model_config.dropout) != model_config:
        raise UserError("embedding training keeps the pretrained model's shape; drop model.* from --set")
    config.seq_len = min(config.seq_len, model_config.max_seq_len)
    config.batch_tokens = config.micro_batch * config.seq_len
    if time_budget is not None:
        config.time_budget = parse_duration(time_budget)
    return config.validate()


def passages(text: str, size: int = PASSAGE_CHARS) -> list[list[str]]:
    """The text as passages of whole sentences, each a list of its sentences, up to about `size` characters."""
    out: list[list[str]] = []
    current: list[str] = []
    length = 0
    for paragraph in re.split(r"\n\s*\n", text):
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            if not sentence:
                continue
            if current and length + len(sentence) > size:
                out.append(current)
                current, length = [], 0
            current.append(sentence)
            length += len(sentence) + 1
    if current:
        out.append(current)
    return out


@dataclass
class PairSource:
    """The corpus's passages, grouped by document, from which pairs are drawn."""

    documents: list[list[list[str]]]  # document -> passages -> sentences

    @classmethod
    def from_run(cls, run_dir: RunDir, split: str, tokenizer: Tokenizer, limit: int = MAX_PASSAGES) -> PairSource:
        """From the corpus's documents, or, in a run whose corpus is gone, its token shards decoded."""
        if (run_dir.corpus / "manifest.json").is_file():
            return cls.from_texts(iter_documents(run_dir.corpus, split), split, limit)
        return cls.from_texts(_decoded_documents(run_dir.tokens, split, tokenizer), split, limit)

    @classmethod
    def from_texts(cls, texts: Iterable[str], split: str, limit: int = MAX_PASSAGES) -> PairSource:
        documents, count = [], 0
        for text in texts:
            document = [p for p in passages(text) if len(" ".join(p)) >= 40]
            if document:
                documents.append(document)
                count += len(document)
            if count >= limit:
                break
        if not documents:
            raise UserError(
                f"the corpus's {split} split has no passage to make pairs from; rebuild it with `ownllm data`"
            )
        return cls(documents)

    def pair(self, kind: str, rng: random.Random) -> tuple[str, str]:
        if kind == "question":
            while True:
                passage, question, _, key = fact_passage(rng)
                if key is not None:  # a question the text answers
                    return question, passage
        if kind == "neighbour":
            multi = [d for d in rng.sample(self.documents, min(8, len(self.documents))) if len(d) > 1]
            if multi:
                document = multi[0]
                i = rng.randrange(len(document) - 1)
                return " ".join(document[i]), " ".join(document[i + 1])
            kind = "sentence"
        sentences = rng.choice(rng.choice(self.documents))
        if kind == "same" or len(sentences) < 2:
            return " ".join(sentences), " ".join(sentences)
        i = rng.randrange(len(sentences))
        rest = sentences[:i] + sentences[i + 1 :] if rng.random() < 0.9 else sentences  # sometimes it stays
        return sentences[i], " ".join(rest)


def _decoded_documents(tokens_dir: Path, split: str, tokenizer: Tokenizer) -> Iterator[str]:
    """The documents of a token split, decoded (each ends with the end-of-text token)."""
    shards = open_tokens(tokens_dir)
    for shard in shards.split(split).shards:
        ends = np.flatnonzero(np.asarray(shard) == shards.eot_id)
        start = 0
        for end in ends.tolist():
            yield tokenizer.decode(shard[start:end].tolist())
            start = end + 1


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, T) padded on the right with 0, lengths (N,)): each text's first max_tokens tokens."""
    ids = [tokenizer.encode_ordinary(t)[:max_tokens] or [tokenizer.eot_id] for t in texts]
    width = max(len(i) for i in ids)
    tokens = torch.zeros(len(ids), width, dtype=torch.long)
    for row, i in enumerate(ids):
        tokens[row, : len(i)] = torch.tensor(i)
    return tokens.to(device), torch.tensor([len(i) for i in ids], device=device)


class PairLoader:
    """Batches of 2 x micro_batch texts (the first texts, then their partners), as Embedder.forward wants."""

    def __init__(self, source: PairSource, tokenizer: Tokenizer, config: TrainConfig, device, rank=0, world=1):
        self.source, self.tokenizer, self.device = source, tokenizer, device
        self.micro_batch, self.seq_len, self.seed = config.micro_batch, config.seq_len, config.seed
        self.rank, self.world, self.batches = rank, world, 0

    def pairs(self, rng: random.Random, n: int) -> list[tuple[str, str]]:
        kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=n)
        return [self.source.pair(kind, rng) for kind in kinds]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(f"{self.seed}/{self.batches}/{self.rank}/{self.world}")
        self.batches += 1
        pairs = self.pairs(rng, self.micro_batch)
        texts = [a for a, _ in pairs] + [b for _, b in pairs]
        return encode_texts(self.tokenizer, texts, self.seq_len, self.device)

    def state_dict(self) -> dict:
        return {"batches": self.batches, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]


@torch.no_grad()
def recall_at_1(model: Embedder, first: tuple, second: tuple, batch: int = 64) -> float:
    """How often a text's nearest partner (cosine) among all the held-out partners is its own."""
    a = torch.cat(
        [model.encode(first[0][i : i + batch], first[1][i : i + batch]) for i in range(0, len(first[1]), batch)]
    )
    b = torch.cat(
        [model.encode(second[0][i : i + batch], second[1][i : i + batch]) for i in range(0, len(second[1]), batch)]
    )
    found = (a @ b.T).argmax(dim=1) == torch.arange(len(a), device=a.device)
    return found.float().mean().item()


class EmbeddingTraining:
    name = STAGE

    def __init__(self, run_dir: RunDir, base: Path, base_id: str | None, dim: int, resume: bool):
        self.run_dir, self.base, self.base_id, self.dim, self.resume = run_dir, base, base_id, dim, resume

    def build(self, config: TrainConfig, dist: Distributed, precision: Precision) -> StageParts:
        device = dist.device
        tokenizer = Tokenizer.load(self.run_dir.tokenizer)
        train = PairSource.from_run(self.run_dir, "train", tokenizer)
        held_out = PairSource.from_run(self.run_dir, "val", tokenizer, limit=4 * EVAL_PAIRS)
        model = Embedder(config.model, self.dim).to(device)
        model.transformer.grad_checkpointing = config.grad_checkpointing
        if not self.resume:
            checkpoints.load_weights(self.base, model.transformer)
        loader = PairLoader(train, tokenizer, config, device, rank=dist.rank, world=dist.world)
        pairs = PairLoader(held_out, tokenizer, config, device).pairs(random.Random(config.seed + 1), EVAL_PAIRS)
        first = encode_texts(tokenizer, [a for a, _ in pairs], config.seq_len, device)
        second = encode_texts(tokenizer, [b for _, b in pairs], config.seq_len, device)
        step = config.micro_batch

        def evaluate(model) -> dict:
            """The contrastive loss over held-out batches of micro_batch pairs, and recall@1 among all of them."""
            losses = []
            for i in range(0, EVAL_PAIRS - step + 1, step):
                tokens = torch.cat([_pad(first[0][i : i + step], second[0]), _pad(second[0][i : i + step], first[0])])
                lengths = torch.cat([first[1][i : i + step], second[1][i : i + step]])
                losses.append(model(tokens, lengths).item())
            return {"val_loss": sum(losses) / max(len(losses), 1), "val_recall_at_1": recall_at_1(model, first, second)}

        base_name = str(self.base.relative_to(self.run_dir.root))
        hooks = Hooks(
            evaluate=evaluate,
            checkpoint_state={
                "tokenizer_hash": tokenizer_hash(self.run_dir.tokenizer),
                "embed_dim": self.dim,
                "base_checkpoint": base_name,
                "base_id": self.base_id,
            },
        )
        passages_read = sum(len(d) for d in train.documents)

        def describe(trainer: Trainer) -> list[str]:
            return [
                f"embedding training from {base_name}: {model.num_params():,} parameters, {self.dim} dimensions, "
                f"{config.micro_batch * dist.world} pairs per step (in-batch negatives), texts cut at "
                f"{config.seq_len} tokens; pairs drawn from {passages_read:,} passages of "
                f"{len(train.documents):,} documents and generated questions; {precision.describe()}"
            ]

        def finished(trainer: Trainer) -> str | None:
            e = trainer.last_eval
            if e is None:
                return None
            return (
                f"held-out pairs after {trainer.step} steps: loss {e['val_loss']:.4f}, "
                f"recall@1 {e['val_recall_at_1']:.1%} among {EVAL_PAIRS}"
            )

        if dist.is_main:
            say(f"pairs: {', '.join(f'{k} {w:.0%}' for k, w in KINDS.items())}")
        record = {**config.to_dict(), "base_checkpoint": base_name, "embed_dim": self.dim}
        return StageParts(model, loader, hooks, record=record, describe=describe, finished=finished)  # type: ignore[arg-type]


def _pad(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """tokens padded on the right to the wider of the two widths, so the two halves of a batch stack."""
    width = max(tokens.shape[1], like.shape[1])
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]))


def load_embedder(path: Path, device: torch.device | str = "cpu") -> tuple[Embedder, dict]:
    """The embedder saved in step directory `path`, in eval mode, and its checkpoint state."""
    state = checkpoints.read_state(path)
    model = Embedder(replace(ModelConfig.from_dict(state["model_config"]), dropout=0.0), state["embed_dim"])
    checkpoints.load_weights(path, model)
    return model.to(device).eval(), state
