"""Request bodies of the OpenAI-compatible routes, checked strictly before any work is done.

Pydantic checks types and fixed ranges (strict mode: "0.5" is not a number, 1 is not a
boolean); `check(settings)` then applies the server's configured limits and refuses the
OpenAI features this server does not have, rather than silently ignoring them.

Every field of OpenAI's chat completion request, decided (tests/test_server_hardening.py
checks the table):

  supported        model (any name; the response names the served model), messages,
                   max_tokens, max_completion_tokens, temperature, top_p, stop, seed, n = 1,
                   stream, stream_options.include_usage
  ignored, on purpose (they change nothing a reply could show)
                   user, metadata, store, service_tier, parallel_tool_calls,
                   tool_choice / function_call "none" or "auto" (there are no client tools),
                   response_format {"type": "text"}, modalities ["text"]
  400              n > 1, logprobs, top_logprobs, logit_bias, presence_penalty and
                   frequency_penalty other than 0, tools, functions, tool_choice /
                   function_call naming a function or "required", response_format other than
                   text, modalities with anything but text, audio, prediction,
                   reasoning_effort, web_search_options

Other unknown fields are ignored, as OpenAI clients add new ones over time.

Extensions beyond OpenAI's fields: `top_k`, `repetition_penalty` (the engine's sampling
settings), `truncate` (drop the oldest turns of a conversation that does not fit) and, for
chat, `knowledge` (answer from the run's knowledge base; default: when it has documents).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ownllm.inference.engine import MAX_PENALTY, MIN_PENALTY
from ownllm.server.security import APIError
from ownllm.server.settings import ServerSettings

INT64 = 2**63


def _whole_characters(text: str) -> str:
    """Refuse a lone UTF-16 surrogate ("\\ud800", half an emoji): UTF-8, SQLite and the tokenizer cannot hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError(
            "lone_surrogate",
            "has half of a character at position {position} (a lone UTF-16 surrogate); send whole characters",
            {"position": e.start},
        ) from None
    return text


Text = Annotated[str, AfterValidator(_whole_characters)]
"""Every text field a request may carry, on every route: whole characters only."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    # "developer" is what newer OpenAI clients call the system message.
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class GenerationFields(_Strict):
    """What both routes share: sampling, stopping, streaming."""

    model: str | None = None  # one model is served; any name is accepted and the response names it
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=MIN_PENALTY, le=MAX_PENALTY)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-INT64, le=2 * INT64 - 1)  # what torch.Generator.manual_seed takes
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    truncate: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check(self, settings: ServerSettings) -> None:
        """Raise a 400 APIError naming the first field beyond the server's limits or features."""
        if self.max_tokens is not None and self.max_tokens > settings.max_tokens_limit:
            _refuse(
                "max_tokens", f"max_tokens is {self.max_tokens}; this server allows at most {settings.max_tokens_limit}"
            )
        if self.n not in (None, 1):
            _refuse("n", "only n=1 is supported; send one request per reply you want")
        stops = self.stop_strings()
        if len(stops) > settings.max_stop:
            _refuse("stop", f"{len(stops)} stop strings; at most {settings.max_stop} are allowed")
        for stop in stops:
            if not stop or len(stop) > settings.max_stop_chars:
                _refuse("stop", f"stop strings must have 1 to {settings.max_stop_chars} characters")
        if self.stream_options is not None and not self.stream:
            _refuse("stream_options", 'stream_options is only allowed with "stream": true')
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                _refuse(name, f"{name} is not supported; use repetition_penalty (an extension, 1 = off)")
        if self.logit_bias:
            _refuse("logit_bias", "logit_bias is not supported")


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None  # the older name of tools
    function_call: Any = None  # the older name of tool_choice
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    knowledge: bool | None = None  # extension: answer from the run's knowledge base (None: when it has documents)

    def check(self, settings: ServerSettings) -> None:
        """As GenerationFields.check, after taking max_completion_tokens as max_tokens; then the messages."""
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                _refuse("max_completion_tokens", "max_tokens and max_completion_tokens disagree; send one of them")
            self.max_tokens = self.max_completion_tokens
        super().check(settings)
        if len(self.messages) > settings.max_messages:
            _refuse("messages", f"{len(self.messages)} messages; at most {settings.max_messages} are allowed")
        for i, message in enumerate(self.messages):
            if len(message.text()) > settings.max_message_chars:
                _refuse(
                    f"messages[{i}].content",
                    f"message {i + 1} has {len(message.text())} characters; "
                    f"at most {settings.max_message_chars} are allowed",
                )
        if self.logprobs:
            _refuse("logprobs", "logprobs are not supported")
        if self.top_logprobs:
            _refuse("top_logprobs", "logprobs are not supported")
        own_tools = "(the model runs its own calculator tool)"
        for name in ("tools", "functions"):
            if getattr(self, name):
                _refuse(name, f"function tools are not supported {own_tools}")
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                _refuse(name, f'{name} can only be "none" or "auto": there are no client tools {own_tools}')
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            _refuse("response_format", "only text responses are supported")
        if self.modalities is not None and set(self.modalities) != {"text"}:
            _refuse("modalities", 'only ["text"] is supported')
        for name in ("audio", "prediction", "reasoning_effort", "web_search_options"):
            if getattr(self, name) is not None:
                _refuse(name, f"{name} is not supported")


class CompletionRequest(GenerationFields):
    prompt: Text | list[Text]
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0)
    suffix: Text | None = None

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def check(self, settings: ServerSettings) -> None:
        super().check(settings)
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            _refuse("prompt", "give one prompt (a string); send one request per prompt")
        if len(self.text()) > settings.max_prompt_chars:
            _refuse(
                "prompt",
                f"the prompt has {len(self.text())} characters; at most {settings.max_prompt_chars} are allowed",
            )
        unsupported = {
            "echo": self.echo,
            "best_of": self.best_of not in (None, 1),
            "logprobs": self.logprobs is not None,
            "suffix": bool(self.suffix),
        }
        for name, used in unsupported.items():
            if used:
                _refuse(name, f"{name} is not supported")


def _refuse(param: str, message: str) -> None:
    raise APIError(400, message, param=param)
