"""Tokenizer wrapper on the demo checkpoint: chat template, thinking switch, EOS ids, streaming decode."""

from __future__ import annotations

import pytest


def test_chat_template_is_chatml_and_thinking_is_off_by_default(demo_engine):
    tok = demo_engine.tokenizer
    ids = demo_engine.chat_tokens([{"role": "user", "content": "Hi"}])
    assert tok.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    thinking = demo_engine.chat_tokens([{"role": "user", "content": "Hi"}], enable_thinking=True)
    assert tok.decode(thinking).endswith("<|im_start|>assistant\n<think>\n")


def test_text_parts_are_joined(demo_engine):
    msg = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "user\nab<|im_end|>" in demo_engine.tokenizer.decode(demo_engine.chat_tokens(msg))


def test_eos_ids_come_from_generation_config(demo_engine):
    vocab = demo_engine.tokenizer.hf.get_vocab()
    assert {vocab["<|im_end|>"], vocab["<|endoftext|>"]} <= demo_engine.tokenizer.eos_token_ids


@pytest.mark.parametrize("text", ["héllo wörld", "世界 🙂 ok", "plain ascii"])
def test_streaming_decode_never_splits_a_character(demo_engine, text):
    tok = demo_engine.tokenizer
    detok = tok.detokenizer()
    pieces = [detok.add(t) for t in tok.encode(text)] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
