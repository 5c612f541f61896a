"""Prometheus metrics (prometheus-client), vLLM's families under a `deltaserve:` prefix, in seconds.

Buckets are set for a local server: TTFT and prefill resolve 1 ms to 10 minutes with a 2 s edge;
inter-token latency resolves 1 ms steps below 10 ms (a 0.8B model decodes in a few ms per token on a GPU);
prefill throughput spans 10 to 500k tokens/s. Prefill histograms carry a `path` label (serial / chunked).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

PREFIX = "deltaserve:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2, 2.5, 5, 7.5, 10, 20, 40,
                80, 160, 640)
ITL_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480,
                   960, 1920, 7680)
TPS_BUCKETS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 262_144)


class Metrics:
    """All metric families of one app, in their own registry (tests build several apps per process)."""

    def __init__(self, model: str, running: Callable[[], float], waiting: Callable[[], float]):
        self.registry = r = CollectorRegistry()
        self.model = model
        m = ["model_name"]
        h = {"registry": r}
        self.queue_time = Histogram(PREFIX + "request_queue_time_seconds", "Arrival to leaving the queue", m,
                                    buckets=TTFT_BUCKETS, **h)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Arrival to first token (includes queue)",
                              m, buckets=TTFT_BUCKETS, **h)
        self.prefill_time = Histogram(PREFIX + "request_prefill_time_seconds", "Prefill wall time on the engine",
                                      [*m, "path"], buckets=TTFT_BUCKETS, **h)
        self.prefill_tps = Histogram(PREFIX + "request_prefill_tokens_per_second", "Prompt tokens / prefill time",
                                     [*m, "path"], buckets=TPS_BUCKETS, **h)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Between successive output tokens", m,
                             buckets=ITL_BUCKETS, **h)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Arrival to end of request", m,
                             buckets=LATENCY_BUCKETS, **h)
        self.prompt_len = Histogram(PREFIX + "request_prompt_tokens", "Prompt length", m, buckets=TOKEN_BUCKETS, **h)
        self.gen_len = Histogram(PREFIX + "request_generation_tokens", "Generated tokens", m, buckets=TOKEN_BUCKETS,
                                 **h)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed", m, **h)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated", m, **h)
        self.requests = Counter(PREFIX + "requests", "Finished requests",
                                [*m, "endpoint", "status", "finish_reason"], **h)
        self.errors = Counter(PREFIX + "errors", "Error responses by type", [*m, "type"], **h)
        self.cancellations = Counter(PREFIX + "request_cancellations", "Requests whose client went away", m, **h)
        Gauge(PREFIX + "num_requests_running", "Requests on the engine", m, **h).labels(model).set_function(running)
        Gauge(PREFIX + "num_requests_waiting", "Requests in the queue", m, **h).labels(model).set_function(waiting)
        self.info = Info(PREFIX + "model", "Model, dtype, backend and GDN prefill path", **h)
        self.set_info()

    def set_info(self, **info: str) -> None:
        self.info.info({"model_name": self.model, **info})

    def error(self, type_: str) -> None:
        self.errors.labels(self.model, type_).inc()

    def observe_request(self, endpoint: str, status: int, finish_reason: str | None) -> None:
        self.requests.labels(self.model, endpoint, str(status), finish_reason or "none").inc()
