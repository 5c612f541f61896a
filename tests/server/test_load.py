"""Concurrency, overload and disconnects against a real server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest


def _wait_until(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_32_concurrent_requests_each_equal_their_solo_output(server):
    jobs = [(f"prompt {i} " + "z" * (i % 7), 100 + i) for i in range(32)]
    kw = dict(model="demo", max_tokens=8, temperature=1.0, extra_body={"ignore_eos": True})
    sync = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    solo = [sync.completions.create(prompt=p, seed=s, **kw).choices[0].text for p, s in jobs]

    async def together():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        replies = await asyncio.gather(*(client.completions.create(prompt=p, seed=s, **kw) for p, s in jobs))
        return [r.choices[0].text for r in replies]

    assert asyncio.run(together()) == solo


def _long_stream(server, max_tokens=100_000, prompt="go"):
    body = {"model": "demo", "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    return httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60)


def test_full_queue_answers_503_at_once_while_health_answers(small_server):
    s = small_server
    with _long_stream(s, 400) as running, _long_stream(s, 400) as waiting:
        lines = running.iter_lines()  # keep a reference: a discarded iterator closes the stream
        next(lines)
        assert _wait_until(lambda: s.metric("deltaserve:num_requests_waiting") == 1)
        t0 = time.time()
        r = httpx.post(s.url + "/v1/completions", json={"model": "demo", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 503 and time.time() - t0 < 1.0
        assert r.headers["retry-after"] and r.json()["error"]["type"] == "server_is_overloaded"
        assert httpx.get(s.url + "/health").json()["status"] == "ready"
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0).completions.create(
                model="demo", prompt="x", max_tokens=1)
        del waiting
    assert _wait_until(lambda: s.metric("deltaserve:num_requests_running") == 0)


def test_disconnect_mid_stream_cancels_and_keeps_the_record(server):
    with _long_stream(server) as r:
        rid = r.headers["x-request-id"]
        lines = r.iter_lines()
        assert sum(1 for line, _ in zip(lines, range(10), strict=False) if line.startswith("data:")) > 0
    assert _wait_until(lambda: server.metric("deltaserve:num_requests_running") == 0)
    assert _wait_until(lambda: httpx.get(f"{server.url}/v1/timings/{rid}").status_code == 200)
    assert httpx.get(f"{server.url}/v1/timings/{rid}").json()["finish_reason"] == "cancelled"
    ok = httpx.post(server.url + "/v1/completions", json={"model": "demo", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200


def test_disconnect_mid_prefill_stops_within_a_step(server):
    """A 6000-token prompt in 64-token prefill steps: the stream shows progress comments, /health and
    /metrics answer meanwhile, then we leave."""
    prompt = [65 + (i % 26) for i in range(6000)]
    with _long_stream(server, max_tokens=4, prompt=prompt) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith(": prefill"):
                break
        for route in ("/health", "/metrics"):
            t0 = time.time()
            assert httpx.get(server.url + route, timeout=2).status_code == 200
            assert time.time() - t0 < 1.0, f"{route} slow during prefill"
    t0 = time.time()
    assert _wait_until(lambda: server.metric("deltaserve:num_requests_running") == 0)
    assert time.time() - t0 < 5
    assert _wait_until(lambda: httpx.get(f"{server.url}/v1/timings/{rid}").status_code == 200)
    record = httpx.get(f"{server.url}/v1/timings/{rid}").json()
    assert record["finish_reason"] == "cancelled" and record["completion_tokens"] == 0


def test_disconnect_of_a_non_streamed_request_cancels_it(server):
    rid = "non-stream-disconnect"
    body = {"model": "demo", "prompt": "x", "max_tokens": 100_000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, headers={"X-Request-Id": rid}, timeout=1.0)
    assert _wait_until(lambda: httpx.get(f"{server.url}/v1/timings/{rid}").status_code == 200)
    assert httpx.get(f"{server.url}/v1/timings/{rid}").json()["finish_reason"] == "cancelled"
    assert server.metric("deltaserve:num_requests_running") == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_disconnect_stops_the_choices_of_n_still_to_run(server, route, stream):
    """n = 3 choices run one after another; the client going away during the first cancels it and the other two
    never reach the engine: one more finished request in the metrics, a cancelled one."""
    def finished() -> float:  # every finished request of this route, whatever its status and finish reason
        from prometheus_client.parser import text_string_to_metric_families

        return sum(s.value for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
                   for s in f.samples if s.name == "deltaserve:requests_total" and s.labels["endpoint"] == route)

    before, cancelled = finished(), server.metric("deltaserve:request_cancellations_total")
    body = {"model": "demo", "max_tokens": 100_000, "ignore_eos": True, "n": 3, "stream": stream,
            **({"prompt": "x"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]})}
    if stream:  # a few chunks of the first choice, then the connection closes
        with httpx.stream("POST", server.url + route, json=body, timeout=30) as r:
            assert sum(1 for line, _ in zip(r.iter_lines(), range(10), strict=False) if line.startswith("data:"))
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + route, json=body, timeout=1.0)
    assert _wait_until(lambda: server.metric("deltaserve:request_cancellations_total") == cancelled + 1)
    time.sleep(1.0)  # a second choice, had it been submitted, would be on the engine by now
    assert server.metric("deltaserve:num_requests_running") == 0
    assert finished() == before + 1


def test_keepalive_comments_and_sse_framing(server):
    prompt = [66] * 3000
    body = {"model": "demo", "prompt": prompt, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert any(line.startswith(": prefill") for line in lines)
    data = [line[6:] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and all(json.loads(d) for d in data[:-1])
