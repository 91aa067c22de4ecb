"""Errors a user can cause (bad path, bad flag, stale artifact) versus bugs.

A `UserError` is printed by the CLI as one line, `error: ...`, with exit status 2 and no
traceback. Its message says what is wrong and, where possible, what to do about it.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input or environment, reported in one line."""


class StaleArtifactError(UserError):
    """An artifact was built from inputs that have changed since; the message names the command to rerun."""


def check_format(meta: dict, kind: str, version: int, path, rebuild_hint: str) -> None:
    """Refuse an artifact of another kind or format version with a one-line message."""
    got_kind, got_version = meta.get("format"), meta.get("version")
    if got_kind != kind:
        raise UserError(f"{path} is not an {kind} artifact (format={got_kind!r}); {rebuild_hint}")
    if got_version != version:
        raise UserError(f"{path} has format version {got_version}, this ownllm reads version {version}; {rebuild_hint}")
