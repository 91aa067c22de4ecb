"""`ownllm guardrail`: the safety check's own classifier, trained on the run's embeddings.

    ownllm guardrail train --run runs/demo             # about a minute after `ownllm embed train`
    ownllm guardrail check --run runs/demo "some text" # what the blocklist and the classifier find

Training (assistant/safety.py) embeds the bundled labelled tweets (Davidson et al. 2017, MIT)
with the run's embedder, fits a logistic regression, chooses the threshold on the validation
tweets and prints precision and recall on the held-out test tweets, beside the blocklist's on
the same tweets. It writes DIR/guardrail/classifier.json, which `ownllm chat` and `ownllm serve`
use with every guardrail action but `off`.
"""

from __future__ import annotations

import argparse

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.run import RunDir


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train the classifier on the run's embeddings")
    add_run_argument(train)
    check = actions.add_parser("check", help="what the guardrail finds in texts")
    add_run_argument(check)
    check.add_argument("texts", nargs="+", metavar="TEXT")


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    import numpy as np  # lazy: with the model

    from ownllm.assistant import safety  # lazy: loads torch
    from ownllm.assistant.guardrails import Guardrail  # lazy: loads torch
    from ownllm.knowledge.embeddings import TextEmbedder  # lazy: loads torch

    embedder = TextEmbedder.for_run(run_dir.root)
    if args.action == "check":
        classifier = safety.SafetyClassifier.for_run(run_dir.root, embedder)
        if classifier is None:
            say("no classifier in this run (`ownllm guardrail train`): the blocklist alone")
        guard = Guardrail.bundled("flag", classifier)
        for text in args.texts:
            found = guard.findings(text)
            print(f"{'flagged: ' + ', '.join(found) if found else 'nothing found'}  <- {text[:70]}")
        return 0
    if embedder is None:
        raise UserError(f"{run_dir.root} has no embedder; run `ownllm embed train --run {run_dir.root}` first")
    tweets = safety.labelled_tweets()
    say(f"embedding {len(tweets):,} labelled tweets with the run's embedder ({embedder.dim} dimensions)")
    classifier = safety.train_classifier(embedder, tweets)
    m = classifier.metrics
    test = [t for t in tweets if t.split == "test"]
    blocklist = Guardrail.bundled("flag")
    flagged = np.array([bool(blocklist.findings(t.text)) for t in test])
    truth = np.array([t.offensive for t in test])
    b_precision, b_recall = safety.precision_recall(flagged, truth)
    classifier.metrics |= {"blocklist_precision": round(b_precision, 4), "blocklist_recall": round(b_recall, 4)}
    path = run_dir.root / safety.CLASSIFIER_FILE
    classifier.save(path)
    print(
        f"held-out test tweets ({m['test_tweets']:,}, {m['test_offensive_share']:.0%} offensive): classifier "
        f"precision {m['precision']:.1%} recall {m['recall']:.1%} (threshold {m['threshold']:.3f}); "
        f"blocklist precision {b_precision:.1%} recall {b_recall:.1%}; saved {path}"
    )
    return 0
