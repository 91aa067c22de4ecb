"""Chat: the conversation format, conversation data, and the calculator tool.

    from ownllm.chatformat import ChatTemplate, load_conversations, generate_conversations, calculate
    template = ChatTemplate(Tokenizer.load("runs/demo/tokenizer"))
    rendered = template.render(conversation)          # .ids, .mask (1 = trained: what the assistant says)
    prompt = template.render_prompt(conversation)     # ... ending with <|assistant|>, ready to generate
    reply = template.parse_reply(generated_ids)       # .message, .tool_call, .end
    calculate("12 * 7")                               # "84"; bad input gives "error: ...", never an exception

docs/chat.md describes the format, the datasets and the generated conversations.
"""

from ownllm.chatformat.calculator import calculate
from ownllm.chatformat.conversation import Conversation, InvalidConversation, Message, validate
from ownllm.chatformat.datasets import FORMATS, bundled_sft_dir, detect_format, load_bundled, load_conversations
from ownllm.chatformat.generated import KINDS, GeneratedMix, generate_conversations
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.report import LoadedConversations, LoadReport
from ownllm.chatformat.template import ChatTemplate, ParsedReply, RenderedConversation
from ownllm.chatformat.tools import format_tool_call, parse_tool_call, run_tool

__all__ = [
    "ChatTemplate",
    "RenderedConversation",
    "ParsedReply",
    "Conversation",
    "Message",
    "InvalidConversation",
    "validate",
    "Persona",
    "load_conversations",
    "load_bundled",
    "bundled_sft_dir",
    "detect_format",
    "FORMATS",
    "LoadedConversations",
    "LoadReport",
    "generate_conversations",
    "GeneratedMix",
    "KINDS",
    "calculate",
    "run_tool",
    "parse_tool_call",
    "format_tool_call",
]
