"""Who the assistant is: its name and a one-line persona, set in the run's config.

The same values feed the generated identity conversations, the renaming of other bots'
names in datasets, and the default system prompt, so the model is told one story about
itself everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ownllm.core.errors import UserError
from ownllm.core.settings import dataclass_from_dict

MAX_NAME_CHARS = 40


@dataclass(frozen=True)
class Persona:
    name: str = "Pip"
    description: str = "a small assistant trained from scratch on a few megabytes of text"
    creator: str = "the person who trained me with ownllm"

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or not value.strip() or "\n" in value:
                raise UserError(f"persona {field.name} must be one non-empty line of text, not {value!r}")
        if len(self.name) > MAX_NAME_CHARS:
            raise UserError(f"persona name {self.name!r} is longer than {MAX_NAME_CHARS} characters; shorten it")

    def system_prompt(self) -> str:
        return f"You are {self.name}, {self.description}."

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Persona:
        return dataclass_from_dict(cls, d, "persona")
