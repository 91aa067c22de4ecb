"""`ownllm chat`: talk to the run's assistant in the terminal, or answer one prompt for a script.

    ownllm chat --run runs/demo                          # interactive; /help lists the commands
    ownllm chat --run runs/demo -p "What is 12 * 7?"     # one answer on stdout, then exit
    echo "Tell me a story about a cat" | ownllm chat --run runs/demo

The reply streams as it is generated. Notes (dropped turns, where the system prompt came
from) go to stderr, so stdout holds only what the assistant says. Ctrl-C during a reply
stops that reply and keeps what it wrote; Ctrl-C at the prompt clears the line (as in
Python's REPL); Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from ownllm.assistant.guardrails import CLASSIFIER_FINDING, Guardrail
from ownllm.assistant.session import DEFAULT_KB_MODE, KB_MODES, ChatSession, Settings
from ownllm.chatformat.tools import SEARCH, parse_tool_call
from ownllm.commands.common import add_decode_argument, add_retriever_argument, add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.core.interrupts import sigint_blocked
from ownllm.run import RunDir
from ownllm.server.store import Store

HELP = """\
commands:
  /system TEXT      set the system prompt (/system alone shows it, /system - removes it)
  /reset            start the conversation again (the system prompt and settings stay)
  /save FILE        save the conversation and settings as JSON
  /load FILE        continue a saved conversation
  /set NAME VALUE   change a sampling setting (/set alone lists them): {names}
  /remember TEXT    keep a fact about you for later conversations ("my name is ..." is kept by itself)
  /memories         what is kept, numbered;  /forget N  deletes memory N
  /help             this list
  /quit             leave (or Ctrl-D)
Ctrl-C stops a reply; what it wrote so far stays in the conversation."""


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    defaults = Settings()
    parser.add_argument(
        "-p", "--prompt", metavar="TEXT", help="answer this one message and exit (stdin is read when it is a pipe)"
    )
    parser.add_argument(
        "--system",
        metavar="TEXT",
        help='system prompt (default: the persona the model was fine-tuned with; "" for none)',
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        metavar="T",
        help="randomness: 0 always picks the most likely token (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        metavar="K",
        help="sample among the K most likely tokens; 0 for all (default: %(default)s)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        metavar="P",
        help="sample among the most likely tokens that add up to P; 1 for all (default: %(default)s)",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=defaults.repetition_penalty,
        metavar="R",
        help="above 1 makes repeating earlier tokens less likely (default: %(default)s)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=defaults.max_tokens,
        metavar="N",
        help="longest reply in tokens, tool calls included (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="make the replies repeatable")
    parser.add_argument(
        "--stage",
        choices=("sft", "pretrain"),
        default=None,
        help="which checkpoints to chat with (default: sft if the run has them, else pretrain)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_decode_argument(parser)
    parser.add_argument(
        "--guardrail",
        default="mask",
        choices=("off", "flag", "mask", "refuse"),
        help="the blocklist (and the run's classifier, `ownllm guardrail train`) on messages and replies: "
        "mask the words (default), refuse such messages, only flag them, or off",
    )
    parser.add_argument(
        "--kb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer from the run's knowledge base (`ownllm kb add`), citing the passage "
        "(default: when it has documents)",
    )
    parser.add_argument(
        "--kb-mode",
        choices=KB_MODES,
        default=DEFAULT_KB_MODE,
        help="how: rag puts the best passage before your question; tool lets the model call "
        "search(...) (default: %(default)s, which measured better; docs/chat.md)",
    )
    add_retriever_argument(parser)


def run(args: argparse.Namespace) -> int:
    RunDir.open(args.run, create=False)
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if prompt is not None and not prompt.strip():
        raise UserError('the prompt is empty; pass -p "a question" or pipe one in')
    # The threads started while we get ready (by `import torch`, by loading the model) leave
    # Ctrl-C to the main thread, which needs it at the prompt and during replies.
    with sigint_blocked():
        settings = Settings(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            max_tokens=args.max_tokens,
            seed=args.seed,
        ).checked()
        session = ChatSession.open(
            args.run,
            stage=args.stage,
            system=args.system,
            settings=settings,
            device=args.device,
            decode=args.decode,
            knowledge=args.kb,
            kb_mode=args.kb_mode,
        )
        try:  # the same memories as a server without a key ("local")
            session.memory = Store.for_run(args.run)
        except (OSError, UserError) as e:  # a read-only run, a damaged file: chat on without memories
            say(f"(memories are off: cannot open {Path(args.run) / 'assistant.db'}: {e})")
        if args.guardrail != "off":
            session.guardrail = Guardrail.for_run(args.run, args.guardrail, session.embedder)
        if session.knowledge is not None:
            if args.retriever != "bm25" and session.embedder is None:
                session.close()
                raise UserError(f"--retriever {args.retriever} needs the run's embedder: `ownllm embed train`")
            session.knowledge.retriever = args.retriever
    say(session.note)
    try:
        if prompt is not None:
            return answer_once(session, prompt.strip())
        return Repl(session, Path(args.run)).loop()
    finally:
        session.close()
        if session.memory is not None:
            session.memory.close()


def answer_once(session: ChatSession, prompt: str) -> int:
    """Stream one answer to stdout (tool calls to stderr, so stdout is only the answer)."""
    shown = Display(sys.stdout, tools=sys.stderr)
    for event in session.send(prompt):
        shown.show(event)
    shown.end()
    cite(session)
    return 0


def cite(session: ChatSession) -> None:
    """Where the passage the reply was given came from, and what was remembered (on stderr, after the reply)."""
    if session.last_remembered:
        say(f"(remembered: {session.last_remembered} /memories lists what is kept)")
    for citation in session.last_citations:
        say(f"source: {citation.path}, passage {citation.position + 1} (characters {citation.start}-{citation.end})")


class Display:
    """Writes reply events for a person: text as it comes, tool calls as `[calculator: 12 * 7 = 84]`."""

    def __init__(self, out: TextIO, tools: TextIO, dropped_before: int = 0):
        self.out, self.tools = out, tools
        self.at_line_start = True
        self.call: dict | None = None
        self.dropped_before = dropped_before  # said already: only a growing number is news

    def show(self, event) -> None:
        if event.kind == "text":
            self._write(self.out, event.text)
        elif event.kind == "tool_call":
            self.call = parse_tool_call(event.text)
        elif event.kind == "tool_result":
            if self.tools is self.out and not self.at_line_start:
                self._write(self.out, "\n")
            self._write(self.tools, f"[{describe_tool_call(self.call, event.text)}]\n")
        elif event.kind == "guardrail":
            where = "your message" if event.finish_reason == "input" else "the reply"
            self.end()
            found = event.text.split(", ")
            verdicts = [f for f in found if f.startswith(CLASSIFIER_FINDING + " (")]
            what = [f"{len(found) - len(verdicts)} blocked word(s)"] if len(found) > len(verdicts) else []
            what += [f"judged {v} by the classifier" for v in verdicts]
            say(f"(guardrail: {', '.join(what)} in {where})")
        elif event.kind == "done":
            if event.dropped > self.dropped_before or event.finish_reason == "length":
                self.end()
            if event.dropped > self.dropped_before:
                say(f"(the {event.dropped} oldest messages no longer fit in the context; the model does not see them)")
            if event.finish_reason == "length":
                say("(the reply was cut short: it reached max_tokens or the end of the context)")

    def end(self) -> None:
        if not self.at_line_start:
            self._write(self.out, "\n")

    def _write(self, stream: TextIO, text: str) -> None:
        stream.write(text)
        stream.flush()
        if text and stream is self.out:
            self.at_line_start = text.endswith("\n")


def describe_tool_call(call: dict | None, result: str) -> str:
    """`calculator: 12 * 7 = 84`; for an error, `calculator: 1 / 0 -> error: division by zero`;
    a search by what it found: `search: old Mia -> mia.txt, passage 1` (or `-> no passage found`)."""
    call = call or {"name": None, "arguments": "?"}
    name = call["name"] or "tool call"
    if name == SEARCH and not result.startswith("error"):
        found = re.findall(r"^\[(.+?, passage \d+)\] ", result, flags=re.MULTILINE)
        return f"{name}: {call['arguments']} -> {'; '.join(found) or result}"
    joiner = " -> " if result.startswith("error") else " = "
    return f"{name}: {call['arguments']}{joiner}{result}"


class Repl:
    """The interactive loop: a prompt, slash commands, streamed replies that Ctrl-C can stop."""

    def __init__(self, session: ChatSession, run: Path):
        self.session, self.run = session, run
        self.stop_requested = False

    def loop(self) -> int:
        if sys.stdin.isatty():
            import readline  # noqa: F401  # lazy: only a terminal needs it (importing it gives input() line editing)
        # Ctrl-C is how a person stops a reply or clears the line, so it must work even when whoever
        # started us ignored it (a background job of a non-interactive shell inherits SIGINT ignored,
        # and Python then leaves it ignored).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say(f"chatting with {self.run} · /help for commands · Ctrl-D to leave")
        while True:
            try:
                line = input("> ").strip()
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        return 0
                elif line:
                    self.answer(line)
            except KeyboardInterrupt:  # at the prompt: a fresh line, as in Python's REPL
                print(flush=True)
            except EOFError:
                print(flush=True)
                return 0
            except UserError as e:
                say(f"error: {e}")

    def answer(self, text: str) -> None:
        """Stream the reply; the first Ctrl-C stops it after the current token, a second one at once."""
        shown = Display(sys.stdout, tools=sys.stdout, dropped_before=self.session.last_dropped)
        self.stop_requested = False
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        events = self.session.send(text)
        try:
            for event in events:
                shown.show(event)
                if self.stop_requested:
                    break
        except KeyboardInterrupt:
            self.stop_requested = True
        finally:
            events.close()
            signal.signal(signal.SIGINT, previous)
            shown.end()
        cite(self.session)
        if self.stop_requested:
            say("[stopped]")

    def _on_interrupt(self, signum, frame) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def command(self, line: str) -> str | None:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        session = self.session
        if name == "/help":
            print(HELP.format(names=", ".join(Settings.names())))
        elif name in ("/quit", "/exit"):
            return "quit"
        elif name == "/reset":
            session.reset()
            say("(conversation cleared)")
        elif name == "/system":
            if rest == "-":
                session.system = None
            elif rest:
                session.system = rest
            say(f"system prompt: {session.system}" if session.system else "no system prompt")
        elif name == "/set":
            if rest:
                setting, _, value = rest.partition(" ")
                if not value.strip():
                    raise UserError(f"/set needs a value: /set {setting} VALUE")
                session.set(setting.replace("-", "_"), value.strip())
            print("  ".join(f"{k}={'none' if v is None else v}" for k, v in asdict(session.settings).items()))
        elif name in ("/save", "/load"):
            if not rest:
                raise UserError(f"{name} needs a file name: {name} chat.json")
            if name == "/save":
                say(f"saved to {session.save(Path(rest).expanduser())}")
            else:
                session.load(Path(rest).expanduser())
                say(
                    f"loaded {rest}: {len(session.history)} messages; "
                    + (f"system prompt: {session.system}" if session.system else "no system prompt")
                )
        elif name in ("/remember", "/memories", "/forget"):
            self.memories(name, rest)
        else:
            raise UserError(f"unknown command {name}; /help lists the commands")
        return None

    def memories(self, name: str, rest: str) -> None:
        memory, owner = self.session.memory, self.session.memory_owner
        if memory is None:
            raise UserError("memories are off in this chat (assistant.db could not be opened)")
        if name == "/remember":
            if not rest:
                raise UserError("/remember needs the fact: /remember the meeting is on Friday")
            say(f"remembered: {memory.remember(owner, rest)['text']}")
            return
        kept = memory.memories(owner)
        if name == "/forget":
            if not rest.isdigit() or not 1 <= int(rest) <= len(kept):
                raise UserError(f"/forget needs the number of a memory (1-{len(kept)}); /memories lists them")
            memory.forget(owner, kept[int(rest) - 1]["id"])
            say(f"forgotten: {kept[int(rest) - 1]['text']}")
            return
        for i, m in enumerate(kept, 1):
            print(f"  {i}. {m['text']}")
        if not kept:
            say('no memories yet: /remember TEXT, or tell me ("my name is ...")')
