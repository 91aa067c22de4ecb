"""Our chat template (chatformat/template.py) as the Jinja template Hugging Face and llama.cpp apply.

    <|system|>TEXT<|end_of_turn|><|user|>TEXT<|end_of_turn|>
    <|assistant|>TEXT<|tool_call|>calculator(12 * 7)<|end_of_turn|><|tool_result|>84<|end_of_turn|>
    <|assistant|>                                    <- add_generation_prompt

Messages are ours: role system, user, assistant or tool; an assistant's tool call is
`"tool_call": {"name": ..., "arguments": ...}`. The special tokens in the rendered text are
split out as added tokens before the text is encoded, so each message's text is encoded on its
own, as our template does; apply_chat_template gives our ids exactly. One difference is
inherent in a text template: message text that spells a special token ("<|user|>") becomes
that token there, where our template encodes it as plain characters.
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>"
    "{%- elif message['role'] == 'user' -%}<|user|>"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{%- elif message['role'] == 'tool' -%}<|tool_result|>"
    "{%- else -%}{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- message['content'] -}}"
    "{%- if message['tool_call'] is defined and message['tool_call'] -%}<|tool_call|>"
    "{%- if message['tool_call']['name'] -%}"
    "{{- message['tool_call']['name'] + '(' + message['tool_call']['arguments'] + ')' -}}"
    "{%- else -%}{{- message['tool_call']['arguments'] -}}{%- endif -%}"
    "{%- endif -%}"
    "<|end_of_turn|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
