"""The run directory and the artifacts in it: what every stage reads and writes, below all stages.

    rundir.py         RunDir: where each artifact lives; config.toml; metrics.jsonl
    corpus_shards.py  corpus/: the cleaned documents' format (ownllm data writes it)
    token_shards.py   tokens/: the token shards' format and the tokenizer's identity (its hash)
    checkpoints.py    checkpoints/<stage>/: step directories, `latest`, weights and training state
    models.py         which model to load from a run: the one resolver every command uses

Stages pass data only through these artifacts, so a stage needs this package and its own
library, never another stage's internals.
"""

from ownllm.run.rundir import RunDir

__all__ = ["RunDir"]
