"""Malformed input: each case gets its documented 4xx in the OpenAI envelope, never a 500, and the server
keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

COMPLETION = {"model": "demo", "prompt": "hi", "max_tokens": 2}
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


CASES = {
    # name: (path, raw body, status, error code or type, param)
    "not-json": ("/v1/completions", b"{model: demo", 400, "invalid_json", None),
    "invalid-utf8": ("/v1/completions", b'{"model": "demo", "prompt": "\xff\xfe"}', 400, "invalid_json", None),
    "wrong-type-prompt": ("/v1/completions", _json({**COMPLETION, "prompt": 5}), 400, "invalid_request_error",
                          "prompt"),
    "wrong-type-max-tokens": ("/v1/completions", _json({**COMPLETION, "max_tokens": "ten"}), 400,
                              "invalid_request_error", "max_tokens"),
    "negative-max-tokens": ("/v1/completions", _json({**COMPLETION, "max_tokens": -1}), 400,
                            "invalid_request_error", "max_tokens"),
    "huge-max-tokens": ("/v1/completions", _json({**COMPLETION, "max_tokens": 10**9}), 400,
                        "context_length_exceeded", "max_tokens"),
    "temperature-high": ("/v1/completions", _json({**COMPLETION, "temperature": 2.5}), 400,
                         "invalid_request_error", "temperature"),
    "top-p-zero": ("/v1/completions", _json({**COMPLETION, "top_p": 0}), 400, "invalid_request_error", "top_p"),
    "unknown-field": ("/v1/completions", _json({**COMPLETION, "temprature": 1}), 400, "invalid_request_error",
                      "temprature"),
    "missing-model": ("/v1/completions", _json({"prompt": "hi"}), 400, "invalid_request_error", "model"),
    "empty-prompt": ("/v1/completions", _json({**COMPLETION, "prompt": ""}), 400, "invalid_request_error", "prompt"),
    "token-out-of-range": ("/v1/completions", _json({**COMPLETION, "prompt": [1, 99999]}), 400,
                           "invalid_request_error", "prompt"),
    "negative-token": ("/v1/completions", _json({**COMPLETION, "prompt": [-3]}), 400, "invalid_request_error",
                       "prompt"),
    "mixed-prompt-list": ("/v1/completions", _json({**COMPLETION, "prompt": [1, "a"]}), 400,
                          "invalid_request_error", "prompt"),
    "token-out-of-range-in-a-batch": ("/v1/completions", _json({**COMPLETION, "prompt": [[1], [2, 99999]]}), 400,
                                      "invalid_request_error", "prompt"),
    "logprobs-21": ("/v1/completions", _json({**COMPLETION, "logprobs": 21}), 400, "invalid_request_error",
                    "logprobs"),
    "best-of-2": ("/v1/completions", _json({**COMPLETION, "best_of": 2}), 400, "invalid_request_error", "best_of"),
    "suffix": ("/v1/completions", _json({**COMPLETION, "suffix": "x"}), 400, "invalid_request_error", "suffix"),
    "bad-logit-bias": ("/v1/completions", _json({**COMPLETION, "logit_bias": {"abc": 1}}), 400,
                       "invalid_request_error", "logit_bias"),
    "unknown-model": ("/v1/completions", _json({**COMPLETION, "model": "../../etc/passwd"}), 404,
                      "model_not_found", "model"),
    "empty-messages": ("/v1/chat/completions", _json({**CHAT, "messages": []}), 400, "invalid_request_error",
                       "messages"),
    "bad-role": ("/v1/chat/completions", _json({**CHAT, "messages": [{"role": "robot", "content": "x"}]}), 400,
                 "invalid_request_error", "messages.0.role"),
    "image-part": ("/v1/chat/completions", _json({**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}), 400, "invalid_request_error",
                   "messages.0.content"),
    "tools": ("/v1/chat/completions", _json({**CHAT, "tools": [{"type": "function"}]}), 400,
              "invalid_request_error", "tools"),
    "json-mode": ("/v1/chat/completions", _json({**CHAT, "response_format": {"type": "json_object"}}), 400,
                  "invalid_request_error", "response_format"),
    "top-logprobs-alone": ("/v1/chat/completions", _json({**CHAT, "top_logprobs": 2}), 400,
                           "invalid_request_error", "top_logprobs"),
    "body-10MB": ("/v1/completions", _json({**COMPLETION, "prompt": "a" * (10 * 1024 * 1024)}), 413,
                  "request_too_large", None),
    "null-model": ("/v1/completions", _json({**COMPLETION, "model": None}), 400, "invalid_request_error", "model"),
    "seed-past-64-bits": ("/v1/completions", _json({**COMPLETION, "seed": 2**64}), 400, "invalid_request_error",
                          "seed"),
    # JSON's \ud83d without its pair: Python decodes it to a lone surrogate, which no tokenizer can encode
    "lone-surrogate": ("/v1/completions", b'{"model": "demo", "prompt": "\\ud83d", "max_tokens": 2}', 400,
                       "invalid_request_error", "prompt"),
    "lone-surrogate-in-a-batch": ("/v1/completions", b'{"model": "demo", "prompt": ["a", "b\\udc00"], "stream": true}',
                                  400, "invalid_request_error", "prompt.1"),
    "lone-surrogate-in-a-chat-part": ("/v1/chat/completions", b'{"model": "demo", "messages": [{"role": "user", '
                                      b'"content": [{"type": "text", "text": "x\\udfff"}]}]}', 400,
                                      "invalid_request_error", "messages.0.content.0.text"),
    # as deep as the JSON parser takes (its limit is Python's recursion limit): the checks must not recurse past it
    **{f"nested-{d}": ("/v1/completions", _json({**COMPLETION, "user": "x"})[:-1] + b', "stop": ' + b"[" * d
                       + b"]" * d + b"}", 400, "invalid_request_error", None) for d in (900, 962, 2000)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_its_documented_status(server, case):
    path, raw, status, code, param = CASES[case]
    r = httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert code in (error["code"], error["type"])
    if param is not None:
        assert error["param"] == param
    assert r.headers["x-request-id"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_any_64_bit_seed_reproduces_its_samples(server):
    """Seeds are 64-bit integers, signed or not (as vLLM takes them): each reproduces its own samples."""
    for seed in (-1, -(2**63), 2**64 - 1):
        body = {**COMPLETION, "seed": seed, "temperature": 1.0, "max_tokens": 6, "ignore_eos": True, "n": 2}
        first, again = (httpx.post(server.url + "/v1/completions", json=body, timeout=60) for _ in range(2))
        assert first.status_code == again.status_code == 200, first.text
        assert [c["text"] for c in first.json()["choices"]] == [c["text"] for c in again.json()["choices"]]


# every optional field OpenAI's API documents as nullable, given as null (as LangChain and others send them)
NULLS = {"frequency_penalty": None, "logit_bias": None, "max_tokens": None, "n": None, "presence_penalty": None,
         "stop": None, "stream": None, "stream_options": None, "temperature": None, "top_p": None, "user": None}


@pytest.mark.parametrize("path, body, extra", [
    ("/v1/completions", {"prompt": "Hello"}, {"echo": None, "logprobs": None, "best_of": None, "suffix": None}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]},
     {"logprobs": None, "top_logprobs": None, "max_completion_tokens": None, "response_format": None,
      "tools": None, "tool_choice": None, "parallel_tool_calls": None}),
], ids=["completions", "chat"])
def test_a_null_field_takes_its_default(server, path, body, extra):
    """OpenAI's API reads an explicit null as the field's default: the response equals the request without it."""
    base = {"model": "demo", "seed": 7, "ignore_eos": True, "max_tokens": 4, **body}
    plain = httpx.post(server.url + path, json=base, timeout=60)
    nulls = httpx.post(server.url + path, json={**base, **NULLS, **extra, "max_tokens": 4}, timeout=60)
    assert plain.status_code == nulls.status_code == 200, nulls.text
    assert nulls.json()["choices"] == plain.json()["choices"] and nulls.json()["usage"] == plain.json()["usage"]


def test_context_overflow_names_the_counts(small_server):
    r = httpx.post(small_server.url + "/v1/completions", json={**COMPLETION, "prompt": "x" * 600, "max_tokens": 1})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["n_prompt_tokens"] == 600 and error["n_ctx"] == 512


def test_unknown_route_and_method(server):
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_the_openapi_schema_documents_the_models_and_errors(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    post = spec["paths"]["/v1/chat/completions"]["post"]
    assert "400" in post["responses"] and "503" in post["responses"]
    assert "Timings" in spec["components"]["schemas"] and "ChatCompletionResponse" in spec["components"]["schemas"]
    assert httpx.get(server.url + "/docs").status_code == 200
