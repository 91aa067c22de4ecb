"""Settings dataclasses built from dicts (TOML sections, checkpoint state, JSON configs).

A misspelt key must not pass silently as a default: it is refused in one line, listing the
names that would have been understood.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar, cast

from ownllm.core.errors import UserError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], values: dict, what: str) -> T:
    """`cls(**values)`, refusing keys that are not fields of `cls` (`what` names them in the message)."""
    known = {f.name for f in fields(cast(Any, cls))}  # every caller passes a dataclass
    unknown = set(values) - known
    if unknown:
        raise UserError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)
