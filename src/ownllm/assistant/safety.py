"""The guardrail's classifier: offensive language recognised on the run's own embeddings.

    rows = labelled_tweets()                                  # the bundled data, split train/val/test
    classifier, report = train_classifier(embedder, rows)     # logistic regression on the vectors
    classifier.save(run_dir / CLASSIFIER_FILE)
    classifier = SafetyClassifier.for_run(run_dir, embedder)  # None without one, or for another embedder
    classifier.scores(["some text"])                          # the probability that each is offensive

The data is Davidson et al. (ICWSM 2017): 24,783 tweets, each labelled hate speech, offensive
language or neither by crowd workers (resources/safety/davidson_labeled_data.csv.gz, MIT).
Positive here is hate speech or offensive language. The split is fixed by the row number
(one in ten held out for the test, one in ten for choosing the threshold), so every run
reports on the same tweets. Tweets are cleaned as their README advises: HTML escapes decoded,
"RT @user:" dropped, mentions and links replaced by placeholders.

The threshold is the one with the best recall among those with at least TARGET_PRECISION on
the validation tweets (a guardrail that fires on ordinary messages is worse than one that
misses some), or the best F1 when none reaches it. The classifier is a direction in the
embedder's space, so it belongs to one embedder: after `ownllm embed train`, train it again.
The labels are known to carry bias (Davidson et al. 2019 found African-American English
tweets labelled offensive far more often); the card and docs say so.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_write_text

CLASSIFIER_FILE = Path("guardrail") / "classifier.json"
DATA_FILE = "davidson_labeled_data.csv.gz"
TARGET_PRECISION = 0.95
_MENTION = re.compile(r"@\w+")
_LINK = re.compile(r"https?://\S+")
_RETWEET = re.compile(r"^\s*(?:RT\s+@\w+:?\s*)+", re.I)


class Embeds(Protocol):
    id: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Tweet:
    text: str
    offensive: bool  # hate speech or offensive language by the majority of annotators
    split: str  # train | val | test


def clean(tweet: str) -> str:
    text = html.unescape(html.unescape(tweet))  # some are escaped twice
    text = _RETWEET.sub("", text)
    text = _LINK.sub("http", _MENTION.sub("@user", text))
    return " ".join(text.split())


def labelled_tweets(path: Path | None = None) -> list[Tweet]:
    """The bundled labelled tweets (or a CSV of the same columns at `path`), cleaned, with their split."""
    if path is None:
        path = Path(str(resources.files("ownllm.resources"))) / "safety" / DATA_FILE
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    rows = []
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        index = int(row[""])
        split = "test" if index % 10 == 0 else "val" if index % 10 == 1 else "train"
        rows.append(Tweet(clean(row["tweet"]), row["class"] in ("0", "1"), split))
    return rows


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hits = float((predicted & truth).sum())
    return hits / max(float(predicted.sum()), 1.0), hits / max(float(truth.sum()), 1.0)


class SafetyClassifier:
    def __init__(self, weights: np.ndarray, bias: float, threshold: float, embedder: Embeds, metrics: dict):
        self.weights, self.bias, self.threshold = weights.astype(np.float32), bias, threshold
        self.embedder, self.metrics = embedder, metrics

    def scores(self, texts: list[str]) -> np.ndarray:
        logits = self.embedder.embed(texts) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def flags(self, text: str) -> float | None:
        """The score when it reaches the threshold, else None."""
        score = float(self.scores([text])[0])
        return score if score >= self.threshold else None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "embedder": self.embedder.id,
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "threshold": self.threshold,
            "metrics": self.metrics,
        }
        atomic_write_text(path, json.dumps(record))

    @classmethod
    def for_run(cls, run_dir: str | Path, embedder: Embeds | None) -> SafetyClassifier | None:
        """The run's classifier; None when it has none or no embedder. One trained on another embedder is
        refused with the command that retrains it."""
        path = Path(run_dir) / CLASSIFIER_FILE
        if embedder is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} ({e}); train it again with `ownllm guardrail train`") from None
        if record.get("embedder") != embedder.id:
            raise UserError(
                f"{path} was trained on another embedder's vectors; train it again with "
                f"`ownllm guardrail train --run {run_dir}`"
            )
        weights = np.asarray(record["weights"], dtype=np.float32)
        return cls(weights, float(record["bias"]), float(record["threshold"]), embedder, record.get("metrics", {}))


def train_classifier(embedder: Embeds, tweets: list[Tweet], steps: int = 300) -> SafetyClassifier:
    """Logistic regression on the tweets' vectors (L-BFGS, a little L2), the threshold chosen on validation,
    precision and recall measured on the test split (and the trivial all-offensive answer's beside them)."""
    vectors = embedder.embed([t.text for t in tweets])
    truth = np.array([t.offensive for t in tweets])
    split = np.array([t.split for t in tweets])
    x = torch.from_numpy(vectors[split == "train"])
    y = torch.from_numpy(truth[split == "train"].astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-4 * (w * w).sum()
        value.backward()
        return value

    optimizer.step(loss)
    weights, bias = w.detach().numpy(), float(b.detach())
    probability = 1.0 / (1.0 + np.exp(-(vectors @ weights + bias)))
    val = split == "val"
    precise, balanced = [], []  # (recall, precision, threshold) reaching the target; (F1, threshold)
    for candidate in np.unique(np.round(probability[val], 3)):
        p, r = precision_recall(probability[val] >= candidate, truth[val])
        if p >= TARGET_PRECISION:
            precise.append((r, p, float(candidate)))
        balanced.append((2 * p * r / max(p + r, 1e-9), float(candidate)))
    threshold = max(precise)[2] if precise else max(balanced)[1]
    test = split == "test"
    precision, recall = precision_recall(probability[test] >= threshold, truth[test])
    metrics = {
        "data": "Davidson et al. 2017 (hate speech or offensive language vs neither), test split",
        "test_tweets": int(test.sum()),
        "test_offensive_share": round(float(truth[test].mean()), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "threshold": threshold,
    }
    return SafetyClassifier(weights, bias, threshold, embedder, metrics)
