"""Bits per byte: a language model's loss that does not depend on its tokenizer.

Cross-entropy per token depends on how much text a token covers: a tokenizer with longer
tokens has a higher loss per token for the same model quality. Dividing the total
information (loss in nats x tokens, converted to bits) by the UTF-8 bytes of the text it
encodes gives bits per byte, comparable across vocabularies. 8.0 is a uniform guess over
bytes; good English models are near 1.0 and below.
"""

from __future__ import annotations

import math


def bits_per_byte(loss_nats_per_token: float, tokens: int, text_bytes: int) -> float:
    """Total bits spent predicting `tokens` tokens divided by the bytes of text they encode."""
    if text_bytes <= 0:
        raise ValueError("bits per byte needs a positive byte count")
    return loss_nats_per_token * tokens / (text_bytes * math.log(2))


def perplexity(loss_nats_per_token: float) -> float:
    """exp(loss): the effective number of equally likely next tokens; inf where it overflows."""
    return math.exp(loss_nats_per_token) if loss_nats_per_token < 700 else math.inf
