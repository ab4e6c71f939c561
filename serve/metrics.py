"""Prometheus metrics of one router service, in a registry of its own (two apps in a process never mix).

Every name starts with ``router_rl_``. Label values are bounded: endpoints are the service's routes (else
``other``), models come from the artifact, API keys are the configured key names (``anonymous`` without
authentication; one ``all`` label with ``--no-metrics-key-names``), error kinds are a fixed set. A client that
left before its answer was complete counts with status 499.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "router_rl_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "router_rl_request_latency_seconds",
            "Time from request to the end of the response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("router_rl_inflight_requests", "Requests being served now", registry=r)
        self.decisions = Counter(
            "router_rl_decisions", "Routing decisions by chosen model", ["model"], registry=r
        )
        self.decision_latency = Histogram(
            "router_rl_decision_latency_seconds",
            "Time for one decision, queueing in the micro-batcher included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "router_rl_batch_size",
            "Requests per micro-batch (encoder + head pass)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_latency = Histogram(
            "router_rl_batch_latency_seconds",
            "Time of one micro-batch's encoder + head pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "router_rl_upstream_requests",
            "Calls to upstream models by model and outcome (ok, error, client_error)",
            ["model", "outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "router_rl_upstream_errors",
            "Upstream failures by model and kind: 429, 5xx, timeout, connect, malformed (these fall back to the next "
            "model), stream (a started stream broke or ended without [DONE]), deadline (a started stream passed "
            "its deadline)",
            ["model", "kind"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "router_rl_upstream_latency_seconds",
            "Upstream time to response headers, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "router_rl_fallbacks",
            "Requests answered by another model than the policy chose",
            ["chosen"],
            registry=r,
        )
        self.spend = Counter(
            "router_rl_spend_usd",
            "Dollars spent upstream (usage tokens x catalog prices), by model and API key",
            ["model", "api_key"],
            registry=r,
        )
        self.tokens = Counter(
            "router_rl_tokens",
            "Upstream tokens by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=r,
        )
        self.feedback = Counter("router_rl_feedback", "Feedback rows stored durably", registry=r)
        self.log_dropped = Counter(
            "router_rl_decision_log_dropped",
            "Decision-log rows dropped because the writer fell behind",
            registry=r,
        )
        self.reloads = Counter(
            "router_rl_reloads", "Artifact reloads by result (ok, error)", ["result"], registry=r
        )
        self.policy = Gauge(
            "router_rl_policy_info",
            "The serving policy version (value 1 for the live one)",
            ["version"],
            registry=r,
        )
        self.shadow = Counter(
            "router_rl_shadow_decisions",
            "Decisions of the shadow policy (--shadow) by result: agree or disagree with the served one, error",
            ["result"],
            registry=r,
        )
        self.queue = Gauge("router_rl_batch_queue", "Requests waiting for a decision", registry=r)
        self.embedding_cache = Counter(
            "router_rl_embedding_cache",
            "Prompts looked up in the in-memory embedding cache, by result (hit, miss)",
            ["result"],
            registry=r,
        )
        self.encoder = Gauge(
            "router_rl_encoder_info",
            "The prompt encoder in use (value 1): model id, backend, device and max_seq_length",
            ["id", "backend", "device", "max_seq_length"],
            registry=r,
        )

    def set_encoder(self, describe: dict) -> None:
        self.encoder.clear()
        labels = {k: str(describe[k]) for k in ("id", "backend", "device", "max_seq_length")}
        self.encoder.labels(**labels).set(1)

    def set_policy(self, version: str) -> None:
        self.policy.clear()
        self.policy.labels(version=version).set(1)
