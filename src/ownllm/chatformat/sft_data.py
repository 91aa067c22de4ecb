"""Chat fine-tuning data: a mixture of conversations, rendered, fitted to the context, split and batched.

    mixture = load_mixture("mix.toml", overrides=["generated=3000"], data_files=["mine.jsonl"])
    data = build_sft_data(mixture, ChatTemplate(tokenizer), seq_len=256)
    loader = SFTLoader(data.train, seq_len=256, batch_size=16, seed=1337, pad_id=template.end_of_turn_id)
    inputs, targets = loader.next_batch()      # (16, width <= 256) int64; targets -100 where nothing is learned

Where the conversations come from (the *mixture*):

  generated   `generated` conversations of the seven kinds (chatformat/generated.py), mixed by
              `generated_mix.weights`: these teach who the assistant is, the calculator, stories
  bundled     OpenAssistant, dolly and ChatterBot (resources/sft/), each capped at a seeded
              sample of `bundled.<name>` conversations: real questions, so the model sees more
              than templates, but few enough that they do not drown the skills
  files       the user's own conversation files (--data), every conversation, any format

Each conversation is rendered with the ChatTemplate. One longer than seq_len + 1 tokens is
cut after the last assistant turn that fits, if what remains still has something to learn,
and dropped otherwise. A stable hash of what each conversation leaves to train on (its tokens
after any cut) sends it to the held-out split or to training, so copies of one example always
land on the same side (two conversations that differ only after their cut are such copies).
"""

from __future__ import annotations

import hashlib
import random
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ownllm.chatformat.conversation import Conversation
from ownllm.chatformat.datasets import bundled_sft_dir, load_conversations
from ownllm.chatformat.generated import GeneratedMix, generate_conversations
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.template import ChatTemplate
from ownllm.core.errors import UserError
from ownllm.model.loss import IGNORE_INDEX

# The bundled datasets by their short names (the mixture's `bundled` table) and their files.
BUNDLED = {"oasst": "oasst-en100-trees.jsonl", "dolly": "dolly-151.jsonl", "chatterbot": "chatterbot-english"}

# Arithmetic gets the most: copying the numbers into the call and the result into the answer is the
# skill a small model learns last (docs/chat.md, "Fine-tuning"); its name it learns from little data,
# so the search tool's share comes mostly from identity and small talk. Conversations of several turns
# (multi_turn) also hold names, sums and stories: their share comes from those kinds.
DEFAULT_WEIGHTS = {
    "identity": 0.06,
    "small_talk": 0.06,
    "arithmetic": 0.38,
    "story": 0.22,
    "passage": 0.05,
    "search": 0.08,
    "multi_turn": 0.15,
}


@dataclass(frozen=True)
class SFTMixture:
    """What the fine-tuning data is made of (a TOML file with these keys, and/or --set sft.KEY=VALUE)."""

    generated: int = 6000  # generated skill conversations
    bundled: dict[str, int] = field(default_factory=lambda: {"oasst": 100, "dolly": 151, "chatterbot": 300})
    files: tuple[str, ...] = ()  # the user's conversation files: every usable conversation is trained on
    held_out: float = 0.03  # share of conversations kept out of training, by content hash
    max_eval: int = 200  # at most this many held-out conversations are evaluated (evaluation time)
    seed: int = 0  # generated conversations and the capped samples of bundled data
    generated_mix: GeneratedMix = field(default_factory=lambda: GeneratedMix(weights=dict(DEFAULT_WEIGHTS)))
    persona: Persona = field(default_factory=Persona)

    def __post_init__(self):
        for name in ("generated", "max_eval", "seed"):
            if not _whole(getattr(self, name)) or getattr(self, name) < 0:
                raise UserError(f"sft.{name}={getattr(self, name)!r} must be a whole number >= 0")
        unknown = set(self.bundled) - set(BUNDLED)
        if unknown:
            raise UserError(f"unknown bundled datasets {sorted(unknown)} in the mixture; known: {', '.join(BUNDLED)}")
        if any(not _whole(n) or n < 0 for n in self.bundled.values()):
            raise UserError(
                f"sft.bundled counts must be whole numbers >= 0 (0 leaves a dataset out), got {self.bundled}"
            )
        if not isinstance(self.held_out, (int, float)) or not 0 <= self.held_out <= 0.5:
            raise UserError(f"sft.held_out={self.held_out!r} must be a share between 0 and 0.5")
        if not self.generated and not any(self.bundled.values()) and not self.files:
            raise UserError("the mixture has no conversations: set sft.generated, sft.bundled.* or pass --data FILE")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["bundled"] = dict(self.bundled)
        d["files"] = list(self.files)
        d["generated_mix"] = {f.name: getattr(self.generated_mix, f.name) for f in fields(GeneratedMix)}
        d["persona"] = self.persona.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SFTMixture:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown sft mixture settings {sorted(unknown)}; known: {sorted(known)}")
        for name, build in (("generated_mix", GeneratedMix.from_dict), ("persona", Persona.from_dict)):
            if name in d:
                if not isinstance(d[name], dict):
                    raise UserError(f"sft.{name} must be a table of settings, not {d[name]!r}")
                if name == "generated_mix" and isinstance(d[name].get("weights"), dict):
                    # a kind not named keeps its default weight (0 leaves it out): --set changes one at a time
                    d[name] = {**d[name], "weights": {**DEFAULT_WEIGHTS, **d[name]["weights"]}}
                d[name] = build(d[name])
        if "bundled" in d:
            if not isinstance(d["bundled"], dict):
                raise UserError(f"sft.bundled must be a table like {{oasst = 100}}, not {d['bundled']!r}")
            d["bundled"] = {**cls().bundled, **d["bundled"]}
        if "files" in d:
            if not isinstance(d["files"], (list, tuple)) or not all(isinstance(p, str) for p in d["files"]):
                raise UserError(f"sft.files must be a list of paths, not {d['files']!r}")
            d["files"] = tuple(d["files"])
        return cls(**d)


def load_mixture(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    data_files: Sequence[str] = (),
    persona_name: str | None = None,
) -> SFTMixture:
    """The defaults, then the TOML file, then each `key=value` override, then --data files and the name.

    Keys are dotted paths into the mixture: `generated=3000`, `bundled.chatterbot=0`,
    `generated_mix.weights.story=0.4`, `persona.name=Ada`. Values are read as TOML
    (`3000`, `0.4`, `true`, `["a.jsonl"]`), and as plain text when they are not TOML.
    Relative paths in the file's `files` are relative to the file.
    """
    settings: dict = {}
    if path is not None:
        path = Path(path)
        try:
            settings = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"mixture file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid TOML ({e}); see docs/chat.md for the mixture format") from None
        if isinstance(settings.get("files"), list):
            settings["files"] = [str(path.parent / p) if isinstance(p, str) else p for p in settings["files"]]
    for item in overrides:
        key, sep, text = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            raise UserError(f"--set sft.{item!r} is not sft.key=value (for example --set sft.generated=3000)")
        _set_nested(settings, keys, _parse_value(text.strip()))
    files = settings.get("files", [])
    if not isinstance(files, list) or not all(isinstance(p, str) for p in files):
        raise UserError(f'sft.files must be a list of paths like ["chats.jsonl"], not {files!r}')
    settings["files"] = [*files, *map(str, data_files)]
    if persona_name is not None:
        settings["persona"] = {**settings.get("persona", {}), "name": persona_name}
    mixture = SFTMixture.from_dict(settings)
    return replace(mixture, files=tuple(str(Path(p).resolve()) for p in mixture.files))


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_nested(settings: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        inner = settings.setdefault(key, {})
        if not isinstance(inner, dict):
            raise UserError(f"sft.{'.'.join(keys)}: {key} is a single value, not a table of settings")
        settings = inner
    settings[keys[-1]] = value


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- building the data -------------------------------------------------------------------------


@dataclass
class Example:
    """One conversation as a training row: inputs and targets (IGNORE_INDEX where nothing is learned)."""

    inputs: np.ndarray  # int32, at most seq_len
    targets: np.ndarray

    @property
    def trained(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


@dataclass
class SourceCounts:
    """What became of one source's conversations."""

    name: str
    loaded: int = 0  # usable conversations the source gave
    whole: int = 0  # fit the context as they are
    cut: int = 0  # cut after the last assistant turn that fits
    dropped: int = 0  # even the first assistant turn does not fit
    capped: int = 0  # left out by the mixture's cap on this source
    held_out: int = 0
    train: int = 0

    def describe(self) -> str:
        parts = [f"{self.whole} whole"]
        parts += [
            f"{n} {what}"
            for n, what in ((self.cut, "cut"), (self.dropped, "dropped"), (self.capped, "over the cap"))
            if n
        ]
        return f"{self.name} {self.loaded} ({', '.join(parts)}; {self.train} train, {self.held_out} held out)"


@dataclass
class SFTData:
    train: list[Example]
    held_out: list[Example]  # the evaluated ones: at most mixture.max_eval
    sources: list[SourceCounts]
    problems: list[str]  # summaries of the user's files that had malformed records

    @property
    def fingerprint(self) -> str:
        """A hash of the training rows: resuming refuses a run whose data has changed under it."""
        h = hashlib.sha256()
        for example in self.train:
            h.update(example.inputs.tobytes())
            h.update(example.targets.tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> list[str]:
        """Two status lines: the totals, then what happened to each source."""
        tokens = sum(len(e.inputs) for e in self.train)
        trained = sum(e.trained for e in self.train)
        first = (
            f"sft data: {len(self.train):,} training conversations ({tokens:,} tokens, "
            f"{trained / max(tokens, 1):.0%} of them trained on), {len(self.held_out)} held out for evaluation"
        )
        return [first, "  " + "; ".join(s.describe() for s in self.sources), *self.problems]


def build_sft_data(mixture: SFTMixture, template: ChatTemplate, seq_len: int) -> SFTData:
    """Every source of the mixture, rendered and fitted to seq_len, split into training and held-out rows."""
    sources: list[tuple[str, list[Conversation], int | None]] = []  # (name, conversations, cap)
    problems: list[str] = []
    if mixture.generated:
        made = generate_conversations(mixture.generated, mixture.persona, mixture.generated_mix, mixture.seed)
        sources.append(("generated", made, None))
    for short, count in mixture.bundled.items():
        if count:
            loaded = load_conversations(bundled_sft_dir() / BUNDLED[short], persona=mixture.persona)
            sources.append((short, loaded.conversations, count))
    for path in mixture.files:
        loaded = load_conversations(path, persona=mixture.persona)
        if loaded.report.skipped:
            problems.append("  " + loaded.report.summary())
        sources.append((Path(path).name, loaded.conversations, None))

    train: list[Example] = []
    held_out: list[tuple[float, Example]] = []
    counts = []
    for name, conversations, cap in sources:
        c = SourceCounts(name, loaded=len(conversations))
        fitted = []
        for conversation in conversations:
            example, how = fit_example(template, conversation, seq_len)
            if example is None:
                c.dropped += 1
                continue
            c.whole += how == "whole"
            c.cut += how == "cut"
            fitted.append(example)
        if cap is not None and len(fitted) > cap:
            c.capped = len(fitted) - cap
            fitted = random.Random(f"ownllm.sft.cap:{mixture.seed}:{name}").sample(fitted, cap)
        for example in fitted:
            h = content_hash(example)
            if h < mixture.held_out:
                held_out.append((h, example))
                c.held_out += 1
            else:
                train.append(example)
                c.train += 1
        counts.append(c)
    if not train:
        raise UserError(f"no conversation fits seq_len={seq_len} tokens for training; raise seq_len or add data")
    evaluated = [example for _, example in sorted(held_out, key=lambda item: item[0])[: mixture.max_eval]]
    return SFTData(train, evaluated, counts, problems)


def fit_example(template: ChatTemplate, conversation: Conversation, seq_len: int) -> tuple[Example | None, str]:
    """The conversation as a row of at most seq_len + 1 tokens: (example, "whole" | "cut") or (None, "dropped").

    A conversation too long for the context is cut right after the last assistant turn that
    fits (its <|end_of_turn|>, or the end of a tool call), so the model never learns a reply
    that stops in the middle; if not even the first reply fits, nothing is left to learn.
    """
    rendered = template.render(conversation)
    how = "whole"
    ids, mask = rendered.ids, rendered.mask
    if len(ids) > seq_len + 1:
        ends = [i + 1 for i in range(seq_len + 1) if mask[i] and ids[i] == template.end_of_turn_id]
        if not ends:
            return None, "dropped"
        ids, mask, how = ids[: ends[-1]], mask[: ends[-1]], "cut"
    targets = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    return Example(np.array(ids[:-1], dtype=np.int32), np.array(targets, dtype=np.int32)), how


def content_hash(example: Example) -> float:
    """A number in [0, 1) fixed by the example's tokens alone (not its position, not the seed)."""
    key = example.inputs.astype("<i4").tobytes() + example.targets.astype("<i4").tobytes()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


# ---- batches -----------------------------------------------------------------------------------


class SFTLoader:
    """Batches of conversations, one per row, padded: the trainer's loader interface.

    The run reads one endless stream of rows: each epoch visits every training conversation
    once, in an order shuffled from (seed, epoch). Rows of one conversation each take as long
    to train as the batch's longest row, and the lengths vary about 10x (a greeting, a story),
    so batches are made of conversations of similar length: every `BUCKET_BATCHES` global
    batches' worth of rows are sorted by length, cut into global batches, and those batches
    are taken in an order shuffled from (seed, chunk). A batch is padded to its longest row
    (rounded up to a multiple of `WIDTH_MULTIPLE`, at most seq_len), not to seq_len: on the
    demo data that is about 100 tokens instead of 256, over twice the conversations per second.

    Everything is a pure function of (seed, batch number), so the whole state is one counter.
    A global batch is batch_size * world rows; rank r of w takes rows r, r + w, r + 2w, ...
    of it: ranks see disjoint conversations of similar lengths, with one shared counter.
    """

    BUCKET_BATCHES = 16
    WIDTH_MULTIPLE = 32  # few distinct shapes, for torch.compile and for the kernels' tile sizes

    def __init__(
        self,
        examples: list[Example],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        *,
        pad_id: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        fingerprint: str = "",
    ):
        if not examples:
            raise UserError("no training conversations to make batches from")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        longest = max(len(e.inputs) for e in examples)
        if longest > seq_len:
            raise ValueError(f"a row of {longest} tokens does not fit seq_len={seq_len}")
        self.examples, self.seq_len, self.batch_size, self.seed = examples, seq_len, batch_size, seed
        self.pad_id, self.device, self.rank, self.world = pad_id, torch.device(device), rank, world
        self.fingerprint = fingerprint
        self.batches = 0  # global batches consumed so far: the whole resumable state
        self._epoch = -1
        self._order: np.ndarray | None = None
        self._chunk = -1
        self._chunk_batches: list[list[Example]] = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, width <= seq_len) int64 on the loader's device."""
        rows = self.global_batch(self.batches)[self.rank :: self.world]
        self.batches += 1
        longest = max(len(e.inputs) for e in rows)
        width = min(self.seq_len, -(-longest // self.WIDTH_MULTIPLE) * self.WIDTH_MULTIPLE)
        return pad_batch(rows, width, self.pad_id, self.device)

    def global_batch(self, b: int) -> list[Example]:
        """The batch_size * world rows of global batch b (every rank's rows)."""
        chunk, slot = divmod(b, self.BUCKET_BATCHES)
        if chunk != self._chunk:
            size = self.batch_size * self.world
            first = chunk * self.BUCKET_BATCHES * size
            rows = [self.row(first + i) for i in range(self.BUCKET_BATCHES * size)]
            rows.sort(key=lambda e: len(e.inputs))  # stable: equal lengths keep the shuffled order
            batches = [rows[i : i + size] for i in range(0, len(rows), size)]
            order = np.random.default_rng([self.seed, 1, chunk]).permutation(len(batches))
            self._chunk, self._chunk_batches = chunk, [batches[i] for i in order]
        return self._chunk_batches[slot]

    def row(self, n: int) -> Example:
        """Row n of the stream: epoch n // N, in that epoch's shuffled order."""
        epoch, index = divmod(n, len(self.examples))
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.examples))
        assert self._order is not None  # set for this epoch just above, or on an earlier call
        return self.examples[int(self._order[index])]

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world": self.world,
            "conversations": len(self.examples),
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the batches `state` consumed: same data and seed, and the same global batch
        (batch_size * world), which any number of processes may share."""
        saved = {**state, "global_batch": state["batch_size"] * state["world"]}
        now = {
            "seq_len": self.seq_len,
            "seed": self.seed,
            "conversations": len(self.examples),
            "fingerprint": self.fingerprint,
            "global_batch": self.batch_size * self.world,
        }
        for key, value in now.items():
            if saved[key] != value:
                raise UserError(
                    f"cannot resume: the fine-tuning data loader's {key} was {saved[key]} and is now {value}; "
                    f"resume with the data and settings of the checkpoint, or start over with --restart"
                )
        self.batches = int(state["batches"])


def pad_batch(rows: list[Example], width: int, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded at the end to `width`: inputs with pad_id (causal attention never looks ahead), targets ignored."""
    padded_inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
    padded_targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for i, row in enumerate(rows):
        padded_inputs[i, : len(row.inputs)] = row.inputs
        padded_targets[i, : len(row.targets)] = row.targets
    inputs, targets = torch.from_numpy(padded_inputs), torch.from_numpy(padded_targets)
    if device.type == "cuda":
        return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
    return inputs, targets


def eval_batches(
    examples: list[Example], batch_size: int, pad_id: int, device: torch.device | str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out rows in batches of similar length, each padded only to its longest row (no training
    happens here, so the width may vary): the same batches at every evaluation."""
    ordered = sorted(examples, key=lambda e: len(e.inputs))
    device = torch.device(device)
    return [
        pad_batch(chunk, max(len(e.inputs) for e in chunk), pad_id, device)
        for chunk in (ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size))
    ]
