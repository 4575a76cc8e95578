"""Text front end: CLIP tokenizer and A1111 prompt syntax (weights, BREAK, 75-token chunks). Pure Python."""

from .prompt import (
    CHUNK_LENGTH,
    CHUNK_TOKENS,
    PromptTokens,
    apply_weights,
    pad_chunks,
    parse_prompt_attention,
    tokenize_pair,
    tokenize_prompt,
)
from .tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, OPEN_CLIP_PAD_ID, VOCAB_SIZE, ClipTokenizer

__all__ = [
    "BOS_ID", "CHUNK_LENGTH", "CHUNK_TOKENS", "EOS_ID", "MAX_LENGTH", "OPEN_CLIP_PAD_ID", "VOCAB_SIZE",
    "ClipTokenizer", "PromptTokens", "apply_weights", "pad_chunks", "parse_prompt_attention", "tokenize_pair",
    "tokenize_prompt",
]
