"""Tokenizer and chat template from the checkpoint (transformers.AutoTokenizer), plus streaming detokenization."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError, ModelLoadError

log = logging.getLogger("deltaserve")

CHAT_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class Tokenizer:
    """Wraps a Hugging Face tokenizer: encode, chat template (thinking off by default), EOS ids, decode."""

    def __init__(self, model_dir: Path, extra_eos: Iterable[int] = ()):
        from transformers import AutoTokenizer  # heavy import: only when a model is loaded

        try:
            self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as e:
            raise ModelLoadError(f"cannot load a tokenizer from {model_dir}: {e}") from None
        self.eos_token_ids = self._eos_ids(model_dir) | set(extra_eos)
        self.vocab_size = len(self.hf)

    def _eos_ids(self, model_dir: Path) -> set[int]:
        """EOS from generation_config.json, the tokenizer, and the ChatML end-of-turn token when present."""
        ids: set[int] = set()
        gen = model_dir / "generation_config.json"
        if gen.exists():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else eos or [])
        if self.hf.eos_token_id is not None:
            ids.add(self.hf.eos_token_id)
        vocab = self.hf.get_vocab()
        ids.update(vocab[t] for t in CHAT_STOP_TOKENS if t in vocab)
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=True))

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        enable_thinking: bool = False,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> list[int]:
        """Token ids of a conversation; `enable_thinking` is passed explicitly (the model card's default: off)."""
        if not self.has_chat_template:
            raise InvalidInputError("this model's tokenizer has no chat template; use the completions API")
        try:
            text = self.hf.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                **template_kwargs,
            )
        except Exception as e:  # jinja errors from malformed messages
            raise InvalidInputError(f"the chat template rejected these messages: {e}") from None
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_text(self, token: int) -> str:
        """Text of one token as the OpenAI logprobs fields show it."""
        return self.hf.decode([token], skip_special_tokens=False)

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (OpenAI's logprobs `bytes`: concatenated over a response they give its
        UTF-8). A byte-level BPE token may hold part of a character, whose text alone is U+FFFD, so its piece is
        mapped back through the byte-level alphabet; added tokens and other tokenizers give their text's UTF-8."""
        piece = self.hf.convert_ids_to_tokens(token) if self._byte_decoder else None
        if piece is not None and token not in self.hf.added_tokens_decoder:
            try:
                return bytes(self._byte_decoder[c] for c in piece)
            except KeyError:  # not a byte-level piece after all
                pass
        return self.token_text(token).encode("utf-8")

    @functools.cached_property
    def _byte_decoder(self) -> dict[str, int]:
        """Byte-level alphabet character -> byte, where the tokenizer decodes byte-level (GPT-2 style, as Qwen's
        does); else empty."""
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is None or "ByteLevel" not in repr(backend.decoder):
            return {}
        try:
            from transformers.convert_slow_tokenizer import bytes_to_unicode
        except ImportError:  # moved in a later transformers: fall back to each token's text
            return {}
        return {c: b for b, c in bytes_to_unicode().items()}

    def detokenizer(self) -> StreamingDetokenizer:
        return StreamingDetokenizer(self)


class StreamingDetokenizer:
    """Emits text as tokens arrive, holding back bytes of an incomplete UTF-8 character.

    Decodes a short window (prefix_offset..end) rather than everything, so multi-token characters and
    tokenizers that merge spaces across tokens come out exactly as a full decode would.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, token: int) -> str:
        """Append a token; return the new text it completes (possibly empty)."""
        self.tokens.append(token)
        prefix = self.tokenizer.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and (not full.endswith("\ufffd") or self._held_bytes_tokens() > 4):
            new = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            self.text += new
            return new
        return ""

    def _held_bytes_tokens(self) -> int:
        """Held-back tokens that stand for bytes: a character spans at most 4 byte tokens, so past that the U+FFFD
        is real (invalid bytes) and goes out. Tokens that stand for none (ids past the tokenizer's vocabulary, in a
        model's padded embedding) do not count. Only asked while the text ends in U+FFFD (not every token)."""
        return sum(1 for t in self.tokens[self.read_offset :] if self.tokenizer.token_bytes(t))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        prefix = self.tokenizer.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.tokens[self.prefix_offset :])
        new = full[len(prefix) :]
        self.prefix_offset = self.read_offset = len(self.tokens)
        self.text += new
        return new
