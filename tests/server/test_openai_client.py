"""The official `openai` package, unmodified, against a real server."""

from __future__ import annotations

import math

import openai
import pytest


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def test_completion_with_logprobs(server):
    r = client(server).completions.create(model="demo", prompt="Hello", max_tokens=6, temperature=0, logprobs=3,
                                          extra_body={"ignore_eos": True})
    choice = r.choices[0]
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens == 5
    assert len(choice.logprobs.tokens) == 6 and choice.finish_reason == "length"
    for lp, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs, strict=True):
        assert lp <= 0 and len(top) <= 3 and max(top.values()) >= lp - 1e-6  # greedy: chosen is the top token
    assert "".join(choice.logprobs.tokens) == choice.text


def test_echo_scores_the_prompt_like_the_classic_api(server):
    ids = [72, 101, 108, 108, 111, 33]
    r = client(server).completions.create(model="demo", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "Hello!" and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.token_logprobs) == 6 and all(x <= 0 for x in lp.token_logprobs[1:])
    assert sum(math.exp(v) for v in lp.top_logprobs[1].values()) <= 1.0


def test_chat_completion_and_logprobs(server):
    r = client(server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=5, temperature=0,
        logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True},
    )
    msg = r.choices[0].message
    assert r.object == "chat.completion" and msg.role == "assistant" and isinstance(msg.content, str)
    assert len(r.choices[0].logprobs.content) == 5
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_text_offsets_count_characters_not_token_texts(server, demo_engine):
    """`text_offset` is each token's character offset in the text: a character split over byte tokens (each alone
    U+FFFD) counts once. Reference: Python's UTF-8 decoder over the tokens' bytes (a token starting inside a
    character sits at that character's start). Echoed prompt and generated tokens, streamed and not."""
    tok = demo_engine.tokenizer
    text = "héllo 世界 🙂!"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # characters split over tokens
    starts, pos = [], b""
    for t in ids:
        starts.append(len(pos.decode("utf-8", errors="ignore")))
        pos += tok.token_bytes(t)
    r = client(server).completions.create(model="demo", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and lp.text_offset == starts

    kw = dict(model="demo", prompt=ids, max_tokens=8, echo=True, logprobs=0, temperature=1.0, seed=2,
              extra_body={"ignore_eos": True})
    whole = client(server).completions.create(**kw).choices[0]
    chunks = list(client(server).completions.create(stream=True, **kw))
    streamed = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert whole.logprobs.text_offset[: len(ids)] == starts and streamed == whole.logprobs.text_offset
    offsets = whole.logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[-1] <= len(whole.text)


def test_chat_logprob_bytes_give_the_content(server):
    """Each token's `bytes` are its own, also for a token holding part of a character (its `token` text alone is
    U+FFFD): over a response, streamed or not, they decode to its content (the demo model's random weights emit
    such split characters and invalid bytes in most samples)."""
    split = 0
    for seed in range(8):
        kw = dict(model="demo", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=16, seed=seed,
                  temperature=1.0, logprobs=True, top_logprobs=1, extra_body={"ignore_eos": True})
        if seed % 2:
            chunks = list(client(server).chat.completions.create(stream=True, **kw))
            tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            r = client(server).chat.completions.create(**kw)
            tokens, content = r.choices[0].logprobs.content, r.choices[0].message.content
        assert len(tokens) == 16
        assert b"".join(bytes(t.bytes) for t in tokens).decode("utf-8", errors="replace") == content
        split += sum(t.token == "\ufffd" and bytes(t.bytes) not in (b"", "\ufffd".encode()) for t in tokens)
    assert split > 0  # the case above was met


def test_streaming_chat_with_usage(server):
    stream = client(server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=7, stream=True, seed=3,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    solo = client(server).chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=7, seed=3, extra_body={"ignore_eos": True})
    assert text == solo.choices[0].message.content


def test_streaming_completion_text_equals_non_streamed(server):
    kw = dict(model="demo", prompt="abc", max_tokens=9, seed=11, extra_body={"ignore_eos": True})
    streamed = "".join(c.choices[0].text for c in client(server).completions.create(stream=True, **kw) if c.choices)
    assert streamed == client(server).completions.create(**kw).choices[0].text


def test_streaming_completion_sends_a_chunk_per_token_even_before_its_text_is_complete(server):
    """Token 228 is the byte 0xE4 alone (the start of a 3-byte character): forced three times, the text stays
    held back until the end, yet each token arrives as its own chunk when it is made (as vLLM streams)."""
    stream = client(server).completions.create(model="demo", prompt="abc", max_tokens=3, stream=True,
                                               extra_body={"ignore_eos": True, "logit_bias": {"228": 100}})
    per_token = [c.choices[0].text for c in stream if c.choices and c.choices[0].finish_reason is None]
    assert per_token[:2] == ["", ""] and len(per_token) == 3
    assert per_token[2] == "\ufffd" * 3


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda c: c.completions.create(model="demo", prompt="x", temperature=5), openai.BadRequestError),
        (lambda c: c.completions.create(model="gpt-4o", prompt="x"), openai.NotFoundError),
        (lambda c: c.chat.completions.create(model="demo", messages=[]), openai.BadRequestError),
        (lambda c: c.completions.create(model="demo", prompt="x", n=17), openai.BadRequestError),
    ],
    ids=["bad-temperature", "unknown-model", "empty-messages", "n17"],
)
def test_client_errors_raise_the_right_exception(server, call, error):
    with pytest.raises(error) as exc:
        call(client(server))
    assert exc.value.body["message"] and exc.value.body["type"]


def test_n_choices_are_each_sampled_like_a_single_request_with_the_next_seed(server):
    """n > 1 (not streamed): choice i * n + j of prompt i is what that prompt alone gives with seed + j; usage counts
    each prompt once and every choice's tokens."""
    c = client(server)
    kw = dict(model="demo", max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True})
    r = c.completions.create(prompt=["Hello", "World"], n=3, seed=11, **kw)
    assert [ch.index for ch in r.choices] == list(range(6))
    for i, prompt in enumerate(["Hello", "World"]):
        for j in range(3):
            solo = c.completions.create(prompt=prompt, seed=11 + j, **kw).choices[0].text
            assert r.choices[i * 3 + j].text == solo, (i, j)
    assert len({ch.text for ch in r.choices[:3]}) > 1  # the samples differ
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 36

    messages = [{"role": "user", "content": "Hi"}]
    chat = c.chat.completions.create(model="demo", messages=messages, n=2, seed=5, max_completion_tokens=6,
                                     logprobs=True, extra_body={"ignore_eos": True})
    solo = [c.chat.completions.create(model="demo", messages=messages, seed=5 + j, max_completion_tokens=6,
                                      extra_body={"ignore_eos": True}) for j in range(2)]
    assert [ch.index for ch in chat.choices] == [0, 1]
    assert [ch.message.content for ch in chat.choices] == [s.choices[0].message.content for s in solo]
    assert all(len(ch.logprobs.content) == 6 for ch in chat.choices)
    assert chat.usage.prompt_tokens == solo[0].usage.prompt_tokens and chat.usage.completion_tokens == 12


def test_streamed_choices_equal_the_non_streamed_ones(server):
    """Several choices streamed (n > 1, a list of prompts): each chunk names its choice, a choice's chunks joined
    give the non-streamed choice (text, finish reason), chat choices each open with their role, and the usage
    chunk comes once, last, with the totals."""
    c = client(server)
    kw = dict(model="demo", prompt=["Hello", "World"], n=2, max_tokens=5, temperature=1.0, seed=4, logprobs=1,
              extra_body={"ignore_eos": True})
    whole = c.completions.create(**kw)
    chunks = list(c.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens == 10
    order = [ch.choices[0].index for ch in chunks[:-1]]
    assert order == sorted(order) and set(order) == {0, 1, 2, 3}  # one choice after another
    for want in whole.choices:
        mine = [ch.choices[0] for ch in chunks[:-1] if ch.choices[0].index == want.index]
        assert "".join(x.text for x in mine) == want.text
        assert mine[-1].finish_reason == want.finish_reason == "length"
        assert [o for x in mine if x.logprobs for o in x.logprobs.text_offset] == want.logprobs.text_offset

    messages = [{"role": "user", "content": "Hi"}]
    ckw = dict(model="demo", messages=messages, n=3, seed=8, max_completion_tokens=6, extra_body={"ignore_eos": True})
    whole = c.chat.completions.create(**ckw)
    chunks = list(c.chat.completions.create(stream=True, **ckw))
    for want in whole.choices:
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == want.index]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
        assert "".join(x.delta.content or "" for x in mine) == want.message.content


def test_missing_or_wrong_key_is_401(auth_server):
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError):
            client(auth_server, api_key=key or "x").models.list()
    assert client(auth_server, api_key="sk-test-key").models.list().data[0].id == "demo"


def test_thinking_goes_to_reasoning_content(server):
    """With enable_thinking the template opens <think>; banning </think> (logit_bias) keeps all text there."""
    kw = dict(model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
    think = {"chat_template_kwargs": {"enable_thinking": True}, "logit_bias": {"260": -100}, "ignore_eos": True}
    r = client(server).chat.completions.create(extra_body=think, **kw)
    msg = r.choices[0].message
    assert msg.content == "" and msg.model_extra["reasoning_content"]
    assert r.usage.completion_tokens_details.reasoning_tokens == 6
    stream = client(server).chat.completions.create(stream=True, extra_body=think, **kw)
    streamed = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in stream if c.choices)
    assert streamed == msg.model_extra["reasoning_content"]
    plain = client(server).chat.completions.create(extra_body={"logit_bias": {"259": -100}}, **kw)
    assert plain.choices[0].message.model_extra.get("reasoning_content") is None


def test_cors_and_open_health_with_a_key(auth_server):
    import httpx

    pre = httpx.options(auth_server.url + "/v1/models", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert pre.headers["access-control-allow-origin"] == "http://example.test"
    assert httpx.get(auth_server.url + "/health").status_code == 200
    assert httpx.get(auth_server.url + "/v1/models").status_code == 401


def test_responses_match_the_documented_schemas(server):
    import httpx

    from server.schemas import ChatCompletionResponse, CompletionResponse, ModelCard, TimingRecord

    c = httpx.post(server.url + "/v1/completions", json={"model": "demo", "prompt": "a", "max_tokens": 2}).json()
    CompletionResponse.model_validate(c)
    TimingRecord.model_validate(httpx.get(f"{server.url}/v1/timings/{c['id']}").json())
    chat = httpx.post(server.url + "/v1/chat/completions",
                      json={"model": "demo", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2})
    ChatCompletionResponse.model_validate(chat.json())
    ModelCard.model_validate(httpx.get(server.url + "/v1/models/demo").json())
    assert httpx.get(server.url + "/v1/models/other").status_code == 404
