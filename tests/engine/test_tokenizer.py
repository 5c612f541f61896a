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


@pytest.mark.parametrize("text", ["héllo wörld", "世界 🙂 ok", "plain ascii"])
def test_token_bytes_concatenate_to_the_utf8_of_the_text(demo_engine, text):
    """A token's bytes (the logprobs' `bytes`) are its own, also where it holds part of a character (its text alone
    is U+FFFD): over a text's tokens they give the text's UTF-8."""
    tok = demo_engine.tokenizer
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(t) for t in ids) == text.encode("utf-8")
    if not text.isascii():
        assert any(tok.token_text(t) == "\ufffd" and tok.token_bytes(t) != "\ufffd".encode() for t in ids)


def test_an_added_tokens_bytes_are_its_text(demo_engine):
    tok = demo_engine.tokenizer
    end = tok.hf.get_vocab()["<|im_end|>"]
    assert tok.token_bytes(end) == b"<|im_end|>"


def test_streaming_decode_is_not_cut_short_by_tokens_without_bytes(demo_engine):
    """Ids past the tokenizer's vocabulary (a model's padded embedding rows) decode to nothing; between the bytes
    of a character they must not count towards the 4 bytes after which an incomplete one is given up: the
    streamed text equals the whole sequence's decode."""
    tok = demo_engine.tokenizer
    blank = len(tok.hf) + 3  # an id the model may sample but the tokenizer has no piece for
    assert tok.decode([blank]) == "" and tok.token_bytes(blank) == b""
    lead, char = tok.encode("\u00e9")[:1], tok.encode("\u068f")  # a lone lead byte, then a two-byte character
    assert len(char) == 2
    ids = [*tok.encode("ab"), blank, *lead, char[0], blank, blank, char[1], blank]
    detok = tok.detokenizer()
    streamed = "".join(detok.add(t) for t in ids) + detok.flush()
    assert streamed == tok.decode(ids) == "ab\ufffd\u068f"
