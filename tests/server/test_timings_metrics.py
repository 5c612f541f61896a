"""Per-request timing records and Prometheus metrics, checked against requests whose sizes we know."""

from __future__ import annotations

import time

import httpx
import pytest

from engine.backend import backend_name


def _complete(server, headers=None, **body):
    body = {"model": "demo", "prompt": "Hello world", "max_tokens": 5, "ignore_eos": True, **body}
    r = httpx.post(server.url + "/v1/completions", json=body, headers=headers or {}, timeout=60)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("fixture, path", [("server", "serial"), ("chunked_server", "chunked")])
def test_timing_record_by_id_and_by_request_id(request, fixture, path):
    server = request.getfixturevalue(fixture)
    r = _complete(server, headers={"X-Request-Id": f"my-req-{fixture}"}, prompt="x" * 100)
    assert r.headers["x-request-id"] == f"my-req-{fixture}"
    body = r.json()
    by_id = httpx.get(f"{server.url}/v1/timings/{body['id']}").json()
    by_rid = httpx.get(f"{server.url}/v1/timings/my-req-{fixture}").json()
    assert by_id == by_rid and by_id["timings"] == body["timings"]
    t = by_id["timings"]
    assert t["prompt_ms"] > 0 and t["prompt_n"] == 100 and t["predicted_n"] == 5
    assert t["prefill_path"] == path and t["backend"] == backend_name()
    assert (t["chunk_size"] == 32) == (path == "chunked")
    assert t["queue_ms"] >= 0 and t["ttft_ms"] >= t["prompt_ms"] and t["total_ms"] >= t["ttft_ms"]
    phases = by_id["phases_ms"]
    times = [phases[k] for k in ("submitted", "admitted", "prefill_start", "first_token", "finished")]
    assert times[0] >= 0 and times == sorted(times)


def test_each_choice_of_a_response_has_its_record(server):
    """n = 2 over two prompts: four records, the response id's the first choice's, choice k's the id + "-k", the
    request id naming the last; each counts its own prompt and tokens."""
    r = _complete(server, headers={"X-Request-Id": "four-choices"}, prompt=["Hello", "Hello world"], n=2,
                  max_tokens=3).json()
    records = [httpx.get(f"{server.url}/v1/timings/{r['id']}" + (f"-{k}" if k else "")).json() for k in range(4)]
    assert [x["prompt_tokens"] for x in records] == [5, 5, 11, 11]
    assert all(x["completion_tokens"] == 3 and x["request_id"] == "four-choices" for x in records)
    assert r["timings"]["prompt_n"] == 5
    assert httpx.get(f"{server.url}/v1/timings/four-choices").json()["id"] == f"{r['id']}-3"


def test_access_log_has_a_line_per_finished_request_with_its_status_and_id(server):
    """Written when the response is complete: a streamed completion's line comes with its status and request id
    (the key for /v1/timings), a client error's with its 4xx."""
    ok = _complete(server, stream=True, headers={"X-Request-Id": "logged-stream"})
    bad = httpx.post(server.url + "/v1/completions", json={"model": "demo", "prompt": []},
                     headers={"X-Request-Id": "logged-bad"}, timeout=60)
    assert ok.status_code == 200 and bad.status_code == 400
    deadline = time.monotonic() + 10  # the line follows the response's last bytes
    while (lines := server.log.read_text().splitlines()) and time.monotonic() < deadline:
        if sum("(request logged-" in x for x in lines) >= 2:
            break
        time.sleep(0.05)
    for rid, status in (("logged-stream", 200), ("logged-bad", 400)):
        hits = [x for x in lines if f"(request {rid})" in x]
        assert len(hits) == 1 and f'"POST /v1/completions HTTP/1.1" {status} ' in hits[0], hits
    assert not [x for x in lines if "HTTP/1.1\" 200 OK" in x and "(request " not in x]  # uvicorn's own is off


def test_request_id_is_generated_and_listing_is_newest_first(server):
    a, b = _complete(server), _complete(server)
    assert len(a.headers["x-request-id"]) >= 16 and a.headers["x-request-id"] != b.headers["x-request-id"]
    listed = httpx.get(server.url + "/v1/timings?limit=2").json()["data"]
    assert [x["id"] for x in listed] == [b.json()["id"], a.json()["id"]]


def test_evicted_and_unknown_records_are_404_with_a_reason(small_server):
    first = _complete(small_server).json()["id"]
    for _ in range(3):
        _complete(small_server)
    r = httpx.get(f"{small_server.url}/v1/timings/{first}")
    assert r.status_code == 404 and "evicted" in r.json()["error"]["message"]
    r = httpx.get(f"{small_server.url}/v1/timings/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "timing_not_found"


def test_counters_move_by_the_right_amounts(server):
    before = {
        "prompt": server.metric("deltaserve:prompt_tokens_total"),
        "gen": server.metric("deltaserve:generation_tokens_total"),
        "ok": server.metric("deltaserve:requests_total", endpoint="/v1/completions", status="200",
                            finish_reason="length"),
        "ttft": server.metric("deltaserve:time_to_first_token_seconds_count"),
        "prefill": server.metric("deltaserve:request_prefill_time_seconds_count", path="serial"),
        "bad": server.metric("deltaserve:errors_total", type="invalid_request_error"),
    }
    usages = [_complete(server, prompt="abc" * k, max_tokens=k).json()["usage"] for k in (2, 3)]
    httpx.post(server.url + "/v1/completions", json={"model": "demo", "prompt": "x", "temperature": -1})
    assert server.metric("deltaserve:prompt_tokens_total") - before["prompt"] == sum(u["prompt_tokens"] for u in usages)
    assert server.metric("deltaserve:generation_tokens_total") - before["gen"] == 5
    assert server.metric("deltaserve:requests_total", endpoint="/v1/completions", status="200",
                         finish_reason="length") - before["ok"] == 2
    assert server.metric("deltaserve:time_to_first_token_seconds_count") - before["ttft"] == 2
    assert server.metric("deltaserve:request_prefill_time_seconds_count", path="serial") - before["prefill"] == 2
    assert server.metric("deltaserve:errors_total", type="invalid_request_error") - before["bad"] == 1
    assert server.metric("deltaserve:num_requests_running") == 0
    assert server.metric("deltaserve:model_info", backend=backend_name(), prefill_path="serial") == 1


def test_chunked_prefill_is_labelled_chunked(chunked_server):
    before = chunked_server.metric("deltaserve:request_prefill_tokens_per_second_count", path="chunked")
    _complete(chunked_server, prompt="y" * 200)
    assert chunked_server.metric("deltaserve:request_prefill_tokens_per_second_count", path="chunked") == before + 1
