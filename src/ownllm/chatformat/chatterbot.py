"""ChatterBot corpus files: YAML lists of short dialogues, with the other bot's name taken out.

    categories:
    - greetings
    conversations:
    - - Hello                 # user
      - Hi                    # assistant
      - How are you?          # user ... turns alternate, starting with the user

The file is read as a YAML node tree (PyYAML's safe composer, which builds no objects),
which gives every dialogue its line number and every turn its text as written: plain
YAML would turn an answer like `yes` or `42` into a boolean or a number. A dialogue with
an odd number of turns loses its last, unanswered user turn. Answers written for the
ChatterBot project call the assistant "ChatterBot"; that name becomes the configured
assistant's, so the model is not taught a second identity.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ownllm.chatformat.conversation import Conversation
from ownllm.chatformat.report import Collector

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C parser when present: 10x faster
OTHER_BOT_NAME = re.compile(r"\bchatter\s?bot\b", re.IGNORECASE)  # not "chatterbots", the common noun


def read_chatterbot(path: Path, collector: Collector, assistant_name: str) -> None:
    """Add every dialogue of one YAML file to `collector`, skipping malformed ones by line."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except UnicodeDecodeError:
        collector.report.skip(f"{path.name}:1", "not UTF-8 text")
        return
    except yaml.YAMLError as e:
        line = e.problem_mark.line + 1 if getattr(e, "problem_mark", None) else 1
        collector.report.skip(f"{path.name}:{line}", f"not valid YAML ({getattr(e, 'problem', None) or e})")
        return
    dialogues = _conversations_node(root)
    if dialogues is None:
        collector.report.skip(f"{path.name}:1", "no 'conversations' list")
        return
    for node in dialogues.value:
        where = f"{path.name}:{node.start_mark.line + 1}"
        turns = _turns(node)
        if turns is None:
            collector.report.skip(where, "a dialogue must be a list of texts")
            continue
        if len(turns) % 2:
            turns = turns[:-1]  # the last user turn has no answer
        if not turns:
            collector.report.skip(where, "a dialogue needs a user turn and an answer")
            continue
        renamed = [OTHER_BOT_NAME.sub(assistant_name, t) for t in turns]
        roles = ("user", "assistant")
        conversation: Conversation = [{"role": roles[i % 2], "content": t} for i, t in enumerate(renamed)]
        collector.add(where, conversation, edited=renamed != turns)


def _conversations_node(root: yaml.Node | None) -> yaml.SequenceNode | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "conversations" and isinstance(value, yaml.SequenceNode):
            return value
    return None


def _turns(node: yaml.Node) -> list[str] | None:
    """The stripped texts of a dialogue node, or None if it is not a list of plain texts."""
    if not isinstance(node, yaml.SequenceNode) or not all(isinstance(t, yaml.ScalarNode) for t in node.value):
        return None
    return [t.value.strip() for t in node.value]
