"""Settings of the router service: defaults, then ``ROUTER_RL_SERVE_*`` environment variables, then flags.

Every field of :class:`ServeSettings` has an environment variable ``ROUTER_RL_SERVE_<FIELD>`` (upper case)
and a flag ``--<field-with-dashes>`` in ``router-rl serve``. API keys come as ``name:token`` pairs separated by
commas (``ROUTER_RL_SERVE_API_KEYS=team-a:sk-a,team-b:sk-b``), or one per line in ``--api-keys-file``; the
name labels spend and decisions, the token is what clients send as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router_rl.onnx_encoder import BACKENDS

ENV_PREFIX = "ROUTER_RL_SERVE_"


class SettingsError(ValueError):
    """A setting with a bad value, named with where it came from."""


def opt(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word
    """A settings field with its one-line doc (shown by ``router-rl serve --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ServeSettings:
    """What ``router-rl serve`` runs with. Defaults are safe for a single host behind a gateway."""

    host: str = opt("127.0.0.1", "interface to bind; 127.0.0.1 keeps the service on this machine")
    port: int = opt(8080, "TCP port")
    device: str = opt("auto", "auto (cuda when present), cpu or cuda")
    torch_threads: int = opt(
        0,
        "CPU threads of the encoder and the head; 0 = automatic: every core for ONNX Runtime (its idle threads "
        "sleep), one core less than the machine has for torch (min 1)",
    )
    encoder_backend: str = opt(
        "auto",
        "auto (onnx on CPU, torch on cuda), torch, onnx (ONNX Runtime, torch's decisions) or onnx-int8 "
        "(faster, may change close decisions)",
    )
    encoder_max_seq_length: int = opt(
        0, "tokens of a prompt the encoder reads; 0 = the artifact's (what the policy was trained with)"
    )
    embedding_cache_size: int = opt(4096, "prompts whose embeddings stay in memory (LRU); 0 = no cache")
    inline_cached: bool = opt(
        True,
        "decide a prompt whose embedding is in the memory cache right on the event loop (only the head runs, "
        "~0.1 ms), skipping the micro-batcher's thread hop",
    )
    upstream: str | None = opt(None, "one OpenAI-compatible base URL for every model (typically the gateway)")
    upstream_api_key_env: str = opt("ROUTER_RL_UPSTREAM_API_KEY", "env var holding the key for --upstream")
    upstreams: str | None = opt(None, "YAML/JSON file mapping models to base URLs, names and key env vars")
    upstream_timeout_s: float = opt(
        60.0, "read timeout of an upstream call (time to headers / between chunks)"
    )
    upstream_connect_timeout_s: float = opt(5.0, "connect timeout of an upstream call")
    upstream_attempt_timeout_s: float = opt(
        300.0,
        "total time one upstream attempt may take, connect to last byte (a stream included); past it a "
        "non-streamed attempt falls back to the next model and a started stream ends with an error event",
    )
    request_timeout_s: float = opt(
        600.0,
        "total time of one request, body read to last byte, every attempt included; past it the answer is "
        "504 (or an error event ends a started stream); the connection is closed when even that cannot be sent",
    )
    upstream_max_connections: int = opt(256, "pooled connections to upstreams, all together")
    max_attempts: int = opt(3, "models tried per chat request: the choice, then the next best on failure")
    stream_usage: bool = opt(True, "ask upstreams for token usage in streams, so streamed spend is counted")
    api_keys: dict[str, str] = field(
        default_factory=dict, metadata={"help": "name -> bearer token; empty: no authentication"}
    )
    admin_token: str | None = opt(None, "bearer token for POST /admin/reload; unset: the endpoint is off")
    max_body_bytes: int = opt(1_000_000, "larger request bodies get 413")
    max_prompt_chars: int = opt(32_000, "longer prompts (the routed text) get 400")
    max_messages: int = opt(1_000, "chat requests with more messages get 400")
    batch_max_size: int = opt(64, "most requests per micro-batch (one encoder + head pass)")
    batch_max_wait_ms: float = opt(
        2.0, "how long a batch's first request waits for company, when the previous batch had some"
    )
    max_queue: int = opt(2_048, "requests waiting for a decision before new ones get 503")
    log_db: str | None = opt(
        "router-rl-decisions.sqlite",
        "decision log: a sqlite path or sqlite:///PATH (WAL), or postgresql://USER@HOST:PORT/DB shared by "
        'several replicas (feedback to any replica finds its decision); "" or none: no log',
    )
    replica_id: str | None = opt(
        None,
        "this replica's name on its decision-log rows (decisions, feedback, spend); default hostname:pid",
    )
    log_prompts: bool = opt(False, "store prompt text in the decision log (else only its sha256)")
    log_embeddings: bool = opt(False, "store the prompt embedding in the decision log (contexts for OPE)")
    explore_epsilon: float = opt(
        0.0, "epsilon-greedy exploration for logged data; 0 = the policy's greedy choice"
    )
    explore_softmax_temperature: float = opt(
        0.0,
        "bonus-softmax exploration (serve/exploration.py): temperature of the draw among allowed models, exact "
        "propensities logged; 0 = off",
    )
    explore_bonus: float = opt(
        1.0,
        "weight of the LinUCB width (the artifact's inverse designs) in the bonus softmax; 0 = plain softmax",
    )
    seed: int = opt(0, "seeds the exploration draws")
    judge_share: float = opt(
        0.0,
        "share of answered chat requests (streamed ones too) graded by the judge after the answer; 0 = off",
    )
    judge_url: str | None = opt(None, "the judge's OpenAI-compatible base URL, e.g. http://127.0.0.1:4000/v1")
    judge_model: str = opt("judge", "the model name sent to the judge endpoint")
    judge_api_key_env: str | None = opt(None, "environment variable holding the judge's API key")
    judge_max_retries: int = opt(2, "retries of a judge call on 429, 5xx, timeouts")
    judge_budget_usd_per_hour: float = opt(1.0, "the judge's spend allowed over any trailing hour")
    judge_usd_per_1m_input: float = opt(0.0, "the judge model's price per 1M input tokens")
    judge_usd_per_1m_output: float = opt(0.0, "the judge model's price per 1M output tokens")
    judge_pairwise_share: float = opt(
        0.0,
        "share of judged answers also compared with the reference model's answer to the same request (both "
        "orders), stored as pairwise feedback; needs judge_reference_model; 0 = off",
    )
    judge_reference_model: str | None = opt(
        None, "the catalog model whose answers are the pairwise reference (it needs an upstream)"
    )
    judge_worker: bool = opt(
        True,
        "grade in a separate low-priority process (serve/judge_worker.py) that calls the judge and stores the "
        "grades itself, so grading never competes with requests for the event loop or the GIL; off: graded "
        "on the server's event loop",
    )
    judge_queue_size: int = opt(
        1000,
        "answers handed to the judge worker and not graded yet (waiting or being graded); one more is dropped "
        "and counted (queue_full)",
    )
    judge_concurrency: int = opt(16, "judge calls in flight at once in the judge worker")
    judge_drain_s: float = opt(
        5.0, "at shutdown, how long the judge worker may finish the grades queued before it is terminated"
    )
    judge_worker_max_restarts: int = opt(
        5, "times a judge worker that died is restarted; after that answers are graded on the event loop"
    )
    sticky_conversations: bool = opt(
        False, "a chat conversation stays on the model that answered its last turn (serve/sticky.py)"
    )
    sticky_max_conversations: int = opt(
        100_000, "conversations the sticky table remembers (LRU, per replica)"
    )
    durable_decisions: bool = opt(
        True,
        "answer a decision only once its log row is committed and synced (group commit); off: rows are "
        "queued and answers say x-router-decision-durable: false",
    )
    client_header_timeout_s: float = opt(
        10.0, "a client must send a request's headers within this many seconds of starting it (else 408)"
    )
    client_body_timeout_s: float = opt(
        30.0, "a client must send the whole request body within this time (408)"
    )
    keep_alive_timeout_s: float = opt(5.0, "idle keep-alive connections are closed after this many seconds")
    docs: bool = opt(True, "serve /docs, /redoc and /openapi.json (without authentication)")
    metrics_key_names: bool = opt(
        True, "label spend in /metrics (which needs no key) with API key names; off: one 'all' label"
    )
    healthz_log_path: bool = opt(False, "show the decision log's file path in /healthz (which needs no key)")
    graceful_timeout_s: float = opt(30.0, "on SIGTERM, time given to in-flight requests before closing")
    log_level: str = opt("info", "uvicorn log level")
    budget_usd_per_hour: float = opt(
        0.0,
        "spend target in dollars per hour, shared by every replica of the decision log: a primal-dual multiplier "
        "added to every cost weight paces the spend (serve/budget.py); 0 = off",
    )
    budget_update_s: float = opt(10.0, "seconds between two reads of the log's spend by the budget pacer")
    budget_window_s: float = opt(300.0, "the spend-rate window the budget pacer steps on, in seconds")
    budget_step: float = opt(0.05, "the budget pacer's dual step per minute (eta)")
    budget_max_multiplier: float = opt(20.0, "the largest multiplier the budget pacer adds to a cost weight")
    budget_recover_s: float | None = opt(
        None,
        "seconds over which the hour so far's spend beyond (or short of) the target is paid back; "
        "default four budget windows",
    )
    shadow: str | None = opt(
        None,
        "a candidate artifact (directory or models:/ URI) that decides beside the served policy on every routed "
        "request (same embedding, one extra head pass), logged to shadow_decisions, never served",
    )
    registry_poll_s: float = opt(
        30.0,
        "when serving a registry alias (models:/NAME@ALIAS or models:/NAME/ALIAS), ask the MLflow registry this "
        "often where it points and hot-reload when it moved; 0 = off",
    )

    def resolved_torch_threads(self) -> int:
        """The torch thread count to use: the setting, or one core less than the machine has (the event
        loop needs one), at least 1. More threads than free cores makes torch's CPU kernels spin and stall."""
        if self.torch_threads > 0:
            return self.torch_threads
        return max(1, (os.cpu_count() or 2) - 1)

    def resolved_encoder_threads(self) -> int:
        """Threads of an ONNX Runtime encoder: the setting, or every core. Its idle threads sleep rather than
        spin, so the event loop still gets a core when it needs one; on the 2-core development machine two
        threads instead of one took /v1/route from 22.5 to 15.3 ms p50 (arena prompts, one client) and from
        33 to 51 requests/s at concurrency 32 (experiments/BENCHMARKS.md)."""
        if self.torch_threads > 0:
            return self.torch_threads
        return max(1, os.cpu_count() or 1)

    def router_kwargs(self) -> dict[str, Any]:
        """The encoder settings as :class:`~router_rl.serve.router.Router` takes them."""
        return {
            "encoder_backend": self.encoder_backend,
            "max_seq_length": self.encoder_max_seq_length or None,
            "embedding_cache_size": self.embedding_cache_size,
            "threads": self.resolved_encoder_threads(),
        }

    def replace(self, **changes: Any) -> ServeSettings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> ServeSettings:
        def bad(name: str, expected: str) -> SettingsError:
            return SettingsError(f"setting {name}={getattr(self, name)!r}: expected {expected}")

        if not 0 <= self.port <= 65535:
            raise bad("port", "0..65535")
        for name in (
            "upstream_timeout_s",
            "upstream_connect_timeout_s",
            "upstream_attempt_timeout_s",
            "request_timeout_s",
            "client_header_timeout_s",
            "client_body_timeout_s",
            "keep_alive_timeout_s",
            "graceful_timeout_s",
        ):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a number of seconds > 0")
        for name in (
            "upstream_max_connections",
            "max_attempts",
            "max_body_bytes",
            "max_prompt_chars",
            "max_messages",
            "batch_max_size",
            "max_queue",
        ):
            if getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if not (math.isfinite(self.budget_usd_per_hour) and self.budget_usd_per_hour >= 0):
            raise bad("budget_usd_per_hour", "dollars per hour >= 0 (0: off)")
        if self.budget_usd_per_hour > 0 and not self.log_db:
            raise bad("budget_usd_per_hour", "0 without a decision log (the spend is read from it)")
        for name in ("budget_update_s", "budget_window_s", "budget_step", "budget_max_multiplier"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a number > 0")
        if self.budget_recover_s is not None and not (
            math.isfinite(self.budget_recover_s) and self.budget_recover_s > 0
        ):
            raise bad("budget_recover_s", "seconds > 0 (unset: four budget windows)")
        if self.shadow is not None and not self.shadow.strip():
            raise bad("shadow", "an artifact directory or a models:/ URI")
        if not (math.isfinite(self.registry_poll_s) and self.registry_poll_s >= 0):
            raise bad("registry_poll_s", "seconds >= 0 (0: off)")
        if self.batch_max_wait_ms < 0:
            raise bad("batch_max_wait_ms", "milliseconds >= 0")
        if self.torch_threads < 0:
            raise bad("torch_threads", "an integer >= 0 (0: automatic)")
        if self.encoder_backend not in ("auto", *BACKENDS):
            raise bad("encoder_backend", f"one of auto, {', '.join(BACKENDS)}")
        if self.encoder_max_seq_length < 0:
            raise bad("encoder_max_seq_length", "tokens >= 1, or 0 for the artifact's")
        if self.embedding_cache_size < 0:
            raise bad("embedding_cache_size", "an integer >= 0 (0: no cache)")
        if not 0.0 <= self.explore_epsilon <= 1.0:
            raise bad("explore_epsilon", "a probability in [0, 1]")
        if not 0.0 <= self.judge_share <= 1.0:
            raise bad("judge_share", "a probability in [0, 1]")
        if self.judge_share > 0 and not (self.judge_url or "").startswith(("http://", "https://")):
            raise bad("judge_url", "an http:// or https:// base URL while judge_share > 0")
        if self.judge_share > 0 and not self.log_db:
            raise bad("judge_share", "0 without a decision log (grades are stored as feedback)")
        for name in ("judge_budget_usd_per_hour", "judge_usd_per_1m_input", "judge_usd_per_1m_output"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "dollars >= 0")
        if not 0.0 <= self.judge_pairwise_share <= 1.0:
            raise bad("judge_pairwise_share", "a probability in [0, 1]")
        if self.judge_pairwise_share > 0 and not self.judge_reference_model:
            raise bad("judge_reference_model", "a catalog model name while judge_pairwise_share > 0")
        if self.judge_max_retries < 0:
            raise bad("judge_max_retries", "an integer >= 0")
        for name in ("judge_queue_size", "judge_concurrency"):
            if getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if not (math.isfinite(self.judge_drain_s) and self.judge_drain_s >= 0):
            raise bad("judge_drain_s", "seconds >= 0")
        if self.judge_worker_max_restarts < 0:
            raise bad("judge_worker_max_restarts", "an integer >= 0")
        if self.sticky_max_conversations < 1:
            raise bad("sticky_max_conversations", "an integer >= 1")
        if self.log_db:
            from router_rl.serve.log_backends import LogURLError, parse_log_url

            try:
                parse_log_url(self.log_db)
            except LogURLError as err:  # its message hides a URL's password
                raise SettingsError(f"setting log_db: {err}") from None
        if not (math.isfinite(self.explore_softmax_temperature) and self.explore_softmax_temperature >= 0):
            raise bad("explore_softmax_temperature", "a temperature >= 0 (0: off)")
        if not (math.isfinite(self.explore_bonus) and self.explore_bonus >= 0):
            raise bad("explore_bonus", "a weight >= 0")
        if self.explore_epsilon > 0 and self.explore_softmax_temperature > 0:
            raise bad(
                "explore_softmax_temperature", "0 while explore_epsilon is on (one exploration at a time)"
            )
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise bad("upstream", "an http:// or https:// base URL such as http://127.0.0.1:4000/v1")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise bad("device", "auto, cpu, cuda or cuda:N")
        return self


def _parse_bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{where}={text!r}: expected true or false")


def parse_api_keys(text: str, where: str) -> dict[str, str]:
    """``name:token,name2:token2`` (or one pair per line) -> {name: token}; a bare token gets a name from its hash."""
    keys: dict[str, str] = {}
    for raw in text.replace("\n", ",").split(","):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, token = item.partition(":")
        if not sep:
            name, token = "key-" + hashlib.sha256(item.encode()).hexdigest()[:8], item
        name, token = name.strip(), token.strip()
        if not name or not token:
            raise SettingsError(f"{where}: {item!r} is not name:token")
        if name in keys:
            raise SettingsError(f"{where}: key name {name!r} appears twice")
        keys[name] = token
    return keys


def read_api_keys_file(path: str | Path) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"{p}: API keys file not found (expected lines of name:token)")
    return parse_api_keys(p.read_text(), str(p))


def from_env(environ: Mapping[str, str] | None = None, base: ServeSettings | None = None) -> ServeSettings:
    """``base`` (or the defaults) with every ``ROUTER_RL_SERVE_*`` variable applied, typed like its field."""
    env = os.environ if environ is None else environ
    settings = base or ServeSettings()
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(ServeSettings):
        var = ENV_PREFIX + f.name.upper()
        if var not in env:
            continue
        text = env[var]
        changes[f.name] = convert(f.name, text, var)
    return settings.replace(**changes)


def convert(name: str, text: str, where: str) -> Any:
    """The typed value of field ``name`` from its text form."""
    default = getattr(ServeSettings(), name)
    if name == "api_keys":
        return parse_api_keys(text, where)
    if isinstance(default, bool):
        return _parse_bool(text, where)
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{where}={text!r}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"{where}={text!r}: expected a number") from None
    if name in (
        "log_db",
        "replica_id",
        "upstream",
        "upstreams",
        "admin_token",
        "shadow",
    ) and text.strip().lower() in (
        "",
        "none",
    ):
        return None
    return text
