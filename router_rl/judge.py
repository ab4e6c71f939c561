"""An LLM judge over HTTP: grade answers 1-10 or compare two, robustly, with retries, a cache and cost.

Two layers:

- :class:`ChatClient`: an async httpx client for any OpenAI-compatible ``/chat/completions`` endpoint (base
  URL, model, API key read from an environment variable). A concurrency limit, connect/read timeouts, and
  retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and malformed
  replies, honouring ``Retry-After``. Streaming measures the time to first token. ``router-rl collect``
  calls the candidate models with it too.
- :class:`Judge`: single-answer grading on a 1-10 scale, optionally against a reference answer, and pairwise
  comparison asked in both orders to cancel position bias (the MT-Bench judge prompts of Zheng et al., 2023,
  "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena", lm-sys/FastChat, Apache-2.0). Verdicts are parsed
  by :func:`parse_rating` / :func:`parse_preference`; one that cannot be parsed is re-asked ``parse_retries``
  times and then returned with ``status="unparsed"``, the judge's text and the reason: never a silent zero.
  Parsed verdicts persist in a sqlite :class:`VerdictCache` keyed by (judge id, prompt, answer[, reference]);
  the judge's own token usage and dollar cost are accounted in :class:`JudgeStats`.

Nothing here imports torch, Hydra or MLflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529})
"""HTTP statuses worth retrying (rate limits, overload, gateway errors); any other 5xx is retried too."""


def _tokens_estimate(text: str) -> int:
    return max(1, len(text) // 4)


# ------------------------------------------------------------------------------------------- errors
class ChatError(RuntimeError):
    """A chat completion failed for good: a non-retryable status, or every retry used up.

    Attributes:
        kind: ``status`` (HTTP error), ``timeout``, ``transport``, ``malformed`` or ``config``.
        status: the last HTTP status, if any.
        attempts: how many requests were made.
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.kind, self.status, self.attempts = kind, status, attempts


class _Retryable(Exception):
    def __init__(
        self, message: str, *, kind: str, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after


# ------------------------------------------------------------------------------------------ backoff
def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (``"2"``, ``"0.5"``) or an HTTP date.

    Returns None when the header is absent or unreadable, and never a negative number.
    """
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    max_retry_after_s: float = 300.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to sleep before retry number ``attempt + 1`` (``attempt`` = 0 after the first failure).

    Without ``Retry-After``: exponential backoff with "equal jitter",
    ``d = min(max_s, base_s * 2**attempt)``, sleep ``d/2 + U(0, d/2)`` (so the sleeps grow, yet callers that
    failed together do not retry together). With ``Retry-After`` the server's delay is honoured (capped at
    ``max_retry_after_s``) plus up to 10% jitter, never less than the server asked.
    """
    rng = rng or random
    if retry_after_s is not None:
        wait = min(float(retry_after_s), float(max_retry_after_s))
        return wait + rng.uniform(0.0, 0.1 * wait)
    d = min(float(max_s), float(base_s) * 2.0 ** int(attempt))
    return d / 2 + rng.uniform(0.0, d / 2)


# ------------------------------------------------------------------------------------------- client
@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint and how to call it.

    Attributes:
        base_url: e.g. ``https://api.openai.com/v1`` or a gateway's ``http://localhost:4000/v1``.
        model: the model name sent in the request.
        api_key_env: environment variable holding the API key (sent as a bearer token); None sends none.
        timeout_s: read timeout: the longest wait for the reply (or, when streaming, between two chunks).
        connect_timeout_s: the longest wait to open a connection.
        max_retries: retries after the first attempt on 429, 5xx, timeouts, dropped connections, bad JSON.
        backoff_base_s: first backoff step; the n-th retry waits about ``backoff_base_s * 2**n`` (jittered).
        backoff_max_s: cap of one backoff sleep.
        max_retry_after_s: cap on a server's ``Retry-After``.
        max_concurrency: requests in flight at once through this client.
        headers: extra HTTP headers.
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    max_concurrency: int = 8
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> Endpoint:
        """An endpoint from a mapping (a Hydra config node), ignoring keys that are not fields."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in dict(cfg).items() if k in names and v is not None}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if "headers" in kwargs:
            kwargs["headers"] = dict(kwargs["headers"])
        return cls(**kwargs)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class ChatResult:
    """One successful chat completion.

    ``latency_s`` is the wall time of the successful attempt (request sent to last byte), ``ttft_s`` the time
    to the first content token when streaming (None otherwise). Token counts are the endpoint's ``usage``
    when it reports one (``usage_reported``), else characters / 4 estimates.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool
    latency_s: float
    ttft_s: float | None
    attempts: int
    model: str


@dataclass
class ClientStats:
    """Counters of one :class:`ChatClient` (for logs and tests)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    retry_sleeps: list[float] = field(default_factory=list)
    retry_reasons: list[str] = field(default_factory=list)


class ChatClient:
    """An async client for one OpenAI-compatible chat endpoint with limits, timeouts and retries.

    Use as ``async with ChatClient(endpoint) as client: result = await client.complete(messages)``.

    Args:
        endpoint: where and how to call.
        http: an ``httpx.AsyncClient`` to share (the caller closes it); None creates one.
        rng: randomness of the backoff jitter (seed it for reproducible sleeps).
        sleep: the coroutine used to wait between retries (``asyncio.sleep``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.endpoint = endpoint
        self._headers = {"Content-Type": "application/json", **dict(endpoint.headers)}
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise ChatError(
                    f"{endpoint.base_url}: environment variable {endpoint.api_key_env!r} is not set; expected the "
                    f"API key for model {endpoint.model!r} there (or set api_key_env to null for no key)",
                    kind="config",
                )
            self._headers["Authorization"] = f"Bearer {key}"
        self._timeout = httpx.Timeout(endpoint.timeout_s, connect=endpoint.connect_timeout_s)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=self._timeout, limits=httpx.Limits(max_connections=max(1, endpoint.max_concurrency))
        )
        self._sem = asyncio.Semaphore(max(1, int(endpoint.max_concurrency)))
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.stats = ClientStats()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        stream: bool = False,
        model: str | None = None,
        **params: Any,
    ) -> ChatResult:
        """One chat completion, retried on transient failures.

        Args:
            messages: OpenAI chat messages.
            stream: stream the answer (server-sent events) and measure the time to first token.
            model: the model name to send (default: the endpoint's).
            **params: further request fields (``temperature``, ``max_tokens``...).
        Raises:
            ChatError: a non-retryable HTTP error, or every retry failed; the message names the endpoint, the
                model, the last error and the number of attempts.
        """
        ep = self.endpoint
        body: dict[str, Any] = {"model": model or ep.model, "messages": list(messages), **params}
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        last: _Retryable | None = None
        for attempt in range(int(ep.max_retries) + 1):
            try:
                async with self._sem:
                    self.stats.requests += 1
                    result = await (self._stream(body) if stream else self._once(body))
                result.attempts = attempt + 1
                return result
            except _Retryable as err:
                last = err
                if attempt == ep.max_retries:
                    break
                delay = backoff_delay(
                    attempt,
                    base_s=ep.backoff_base_s,
                    max_s=ep.backoff_max_s,
                    retry_after_s=err.retry_after,
                    max_retry_after_s=ep.max_retry_after_s,
                    rng=self._rng,
                )
                self.stats.retries += 1
                self.stats.retry_sleeps.append(delay)
                self.stats.retry_reasons.append(str(err))
                await self._sleep(delay)
            except ChatError as err:
                err.attempts = attempt + 1
                self.stats.failures += 1
                raise
        self.stats.failures += 1
        assert last is not None
        raise ChatError(
            f"{ep.url} (model {body['model']!r}): gave up after {int(ep.max_retries) + 1} attempts; last error: {last}",
            kind=last.kind,
            status=last.status,
            attempts=int(ep.max_retries) + 1,
        )

    # ----------------------------------------------------------------------- one attempt
    def _status_error(self, response: httpx.Response, body_text: str) -> Exception:
        status = response.status_code
        detail = body_text[:300].replace("\n", " ")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(body_text)["error"]["message"]
        message = f"HTTP {status}: {detail}"
        if status in RETRY_STATUS or status >= 500:
            return _Retryable(
                message,
                kind="status",
                status=status,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return ChatError(
            f"{self.endpoint.url} (model {self.endpoint.model!r}): {message}", kind="status", status=status
        )

    async def _once(self, body: dict[str, Any]) -> ChatResult:
        t0 = time.perf_counter()
        try:
            response = await self._http.post(
                self.endpoint.url, json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.TimeoutException as err:
            raise _Retryable(f"timeout ({type(err).__name__})", kind="timeout") from err
        except httpx.TransportError as err:
            raise _Retryable(f"connection error ({type(err).__name__}: {err})", kind="transport") from err
        latency = time.perf_counter() - t0
        if response.status_code != 200:
            raise self._status_error(response, response.text)
        try:
            payload = response.json()
            text = payload["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise _Retryable(
                f"malformed response (not a chat completion: {response.text[:120]!r})", kind="malformed"
            ) from err
        usage = payload.get("usage") or {}
        return self._result(body, text, usage, latency, None, payload.get("model"))

    async def _stream(self, body: dict[str, Any]) -> ChatResult:
        t0 = time.perf_counter()
        parts: list[str] = []
        usage: dict[str, Any] = {}
        ttft: float | None = None
        model = None
        try:
            async with self._http.stream(
                "POST", self.endpoint.url, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                if response.status_code != 200:
                    raw = (await response.aread()).decode("utf-8", "replace")
                    raise self._status_error(response, raw)
                done = False
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as err:
                        raise _Retryable(f"malformed stream chunk {data[:80]!r}", kind="malformed") from err
                    if not isinstance(chunk, dict):
                        raise _Retryable(f"malformed stream chunk {data[:80]!r}", kind="malformed")
                    model = chunk.get("model", model)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            parts.append(piece)
                if not done:
                    raise _Retryable("stream ended without [DONE]", kind="transport")
        except httpx.TimeoutException as err:
            raise _Retryable(f"timeout ({type(err).__name__})", kind="timeout") from err
        except httpx.TransportError as err:
            raise _Retryable(f"connection error ({type(err).__name__}: {err})", kind="transport") from err
        latency = time.perf_counter() - t0
        return self._result(
            body, "".join(parts), usage, latency, ttft if ttft is not None else latency, model
        )

    def _result(
        self,
        body: dict[str, Any],
        text: str,
        usage: Mapping[str, Any],
        latency: float,
        ttft: float | None,
        model: Any,
    ) -> ChatResult:
        reported = isinstance(usage.get("prompt_tokens"), int) and isinstance(
            usage.get("completion_tokens"), int
        )
        if reported:
            prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        else:
            prompt_tokens = sum(_tokens_estimate(str(m.get("content", ""))) for m in body["messages"])
            completion_tokens = _tokens_estimate(text)
        return ChatResult(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_reported=reported,
            latency_s=latency,
            ttft_s=ttft,
            attempts=1,
            model=str(model or body["model"]),
        )


# ------------------------------------------------------------------------------------------ parsing
_RATING_PATTERNS = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]"),  # MT-Bench's "[[rating]]"
    re.compile(
        r"\b(?:rating|score|grade)\s*(?:is|of)?\s*[:=]?\s*\**\s*\[?\s*(\d+(?:\.\d+)?)\s*\]?(?:\s*(?:/|out of)\s*10)?",
        re.I,
    ),
    re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.I),
)
_PREFERENCE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


@dataclass(frozen=True)
class Parsed:
    """A parsed verdict: ``value`` (a float 1-10, or ``A``/``B``/``C``), or None with the ``reason``."""

    value: Any
    reason: str = ""


def parse_rating(text: str, *, low: float = 1.0, high: float = 10.0) -> Parsed:
    """The judge's 1-10 rating in ``text``, or None with the reason.

    Looks for MT-Bench's ``[[7]]`` first, then ``Rating: 7`` / ``Score: 7/10``, then ``7/10``/``7 out of 10``,
    using the first pattern that matches. Several different ratings in that pattern (``[[3]] ... [[8]]``)
    are ambiguous, and a rating outside [low, high] is invalid: both give None, never a guessed number.
    """
    if not text or not text.strip():
        return Parsed(None, "empty verdict")
    for pattern in _RATING_PATTERNS:
        values = [float(v) for v in pattern.findall(text)]
        if not values:
            continue
        distinct = sorted(set(values))
        if len(distinct) > 1:
            return Parsed(None, f"conflicting ratings {', '.join(f'{v:g}' for v in distinct)}")
        value = distinct[0]
        if not low <= value <= high:
            return Parsed(None, f"rating {value:g} outside [{low:g}, {high:g}]")
        return Parsed(value)
    return Parsed(None, 'no rating found; expected "[[rating]]" such as "Rating: [[5]]"')


def parse_preference(text: str) -> Parsed:
    """``A``, ``B`` or ``C`` (tie) from MT-Bench's ``[[A]]``/``[[B]]``/``[[C]]``, or None with the reason."""
    if not text or not text.strip():
        return Parsed(None, "empty verdict")
    found = sorted(set(_PREFERENCE.findall(text)))
    if not found:
        return Parsed(None, 'no verdict found; expected "[[A]]", "[[B]]" or "[[C]]"')
    if len(found) > 1:
        return Parsed(None, f"conflicting verdicts {', '.join(found)}")
    return Parsed(found[0])


# ---------------------------------------------------------------------------------------- templates
# The MT-Bench judge prompts (lm-sys/FastChat, fastchat/llm_judge/data/judge_prompts.jsonl, Apache-2.0).
SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    'you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for '
    'example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
    "[The End of Assistant's Answer]"
)
SINGLE_REFERENCE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider correctness and "
    "helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by "
    "comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as "
    "objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 "
    'by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n'
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of "
    "the responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective "
    "as possible. After providing your explanation, output your final verdict by strictly following this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
PAIR_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
    "[The End of Assistant B's Answer]"
)
REASK_RATING = 'Your reply did not end with a single rating in the required format. Reply with only the rating, for example: "Rating: [[5]]".'
REASK_PREFERENCE = 'Your reply did not end with a single verdict in the required format. Reply with only "[[A]]", "[[B]]" or "[[C]]".'
TEMPLATE_VERSION = hashlib.sha256(
    "\0".join(
        [SINGLE_SYSTEM, SINGLE_TEMPLATE, SINGLE_REFERENCE_TEMPLATE, PAIR_SYSTEM, PAIR_TEMPLATE]
    ).encode()
).hexdigest()[:12]


# ---------------------------------------------------------------------------------------- verdicts
@dataclass
class Verdict:
    """The judge's grade of one answer.

    Attributes:
        status: ``ok`` (parsed), ``unparsed`` (the judge answered but no valid rating could be read) or
            ``error`` (the judge could not be reached; ``reason`` says why).
        score: the 1-10 rating (None unless ``ok``).
        quality: ``score / 10`` in [0.1, 1], the data contract's quality (None unless ``ok``).
        raw: the judge's text (last reply).
        reason: why there is no score.
        cached: the verdict came from the cache (no call, no cost).
        prompt_tokens, completion_tokens, cost_usd: what the judge's calls for this verdict used.
        judge: the judge id.
    """

    status: str
    score: float | None = None
    quality: float | None = None
    raw: str = ""
    reason: str = ""
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    judge: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class PairwiseVerdict:
    """A comparison of two answers asked in both orders (position-bias cancelling).

    Attributes:
        status: ``ok`` when both orders gave a verdict; ``unparsed`` or ``error`` otherwise.
        quality: the first answer's score against the second in [0, 1]: the mean over the two orders of
            1 (first better), 0.5 (tie) or 0 (second better). 0.75 = one win and one tie.
        winner: ``first``, ``second`` or ``tie`` (by ``quality``); None unless ok.
        consistent: both orders agreed.
        orders: the two per-order verdicts (``score`` holds 1, 0.5 or 0 for the first answer).
    """

    status: str
    quality: float | None
    winner: str | None
    consistent: bool | None
    orders: tuple[Verdict, Verdict]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def cost_usd(self) -> float:
        return sum(v.cost_usd for v in self.orders)


@dataclass
class JudgeStats:
    """What a :class:`Judge` has done: calls, cache hits, unparsed and failed verdicts, tokens and dollars."""

    calls: int = 0
    cache_hits: int = 0
    unparsed: int = 0
    errors: int = 0
    reasked: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VerdictCache:
    """A persistent sqlite map (judge id, kind, prompt, answer[, reference]) -> parsed verdict.

    Only parsed verdicts are stored, so an unparsed or failed one is asked again next time. Safe to share
    between processes (WAL journal; each put commits).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge TEXT, kind TEXT, value TEXT, raw TEXT,"
            " prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, created REAL)"
        )
        self._conn.commit()

    @staticmethod
    def key(judge: str, kind: str, *texts: str) -> str:
        h = hashlib.sha256()
        for part in (judge, kind, *texts):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
        return h.hexdigest()

    def get(self, key: str) -> tuple[str, str] | None:
        row = self._conn.execute("SELECT value, raw FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put(self, key: str, judge: str, kind: str, value: str, verdict: Verdict) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    judge,
                    kind,
                    value,
                    verdict.raw,
                    verdict.prompt_tokens,
                    verdict.completion_tokens,
                    verdict.cost_usd,
                    time.time(),
                ),
            )

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


# -------------------------------------------------------------------------------------------- judge
@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is called and priced (the ``judge`` config group's ``llm`` option).

    Attributes:
        endpoint: the judge model's endpoint.
        temperature, max_tokens: sampling settings of the judge's calls.
        parse_retries: times an unparsable verdict is re-asked (a follow-up asking for the rating only).
        usd_per_1m_input, usd_per_1m_output: the judge model's prices, for its cost.
        cache: sqlite file of the verdict cache; None disables it.
    """

    endpoint: Endpoint
    temperature: float = 0.0
    max_tokens: int = 1024
    parse_retries: int = 1
    usd_per_1m_input: float = 0.0
    usd_per_1m_output: float = 0.0
    cache: str | None = None

    @property
    def id(self) -> str:
        """What identifies this judge's verdicts: model, prompts version and sampling temperature."""
        return f"{self.endpoint.model}|mtbench-{TEMPLATE_VERSION}|t={self.temperature:g}"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> JudgeConfig:
        """From the ``judge`` config node (``configs/judge/llm.yaml``)."""
        cfg = dict(cfg)
        if cfg.get("source", "llm") != "llm":
            raise ValueError(
                f"judge.source is {cfg.get('source')!r}; an HTTP judge needs judge=llm (source: llm)"
            )
        for key in ("base_url", "model"):
            if not cfg.get(key):
                raise ValueError(f"judge.{key} is not set; expected the judge's OpenAI-compatible {key}")
        names = {f.name for f in fields(cls)} - {"endpoint"}
        return cls(endpoint=Endpoint.from_config(cfg), **{k: cfg[k] for k in names if cfg.get(k) is not None})


class Judge:
    """An LLM judge behind an OpenAI-compatible endpoint.

    ``async with Judge(config) as judge: verdict = await judge.grade(prompt, answer)``.

    Args:
        config: endpoint, sampling, prices and cache.
        client: a ready :class:`ChatClient` (tests inject one); None builds one from ``config.endpoint``.
    """

    def __init__(self, config: JudgeConfig, *, client: ChatClient | None = None) -> None:
        self.config = config
        self.client = client or ChatClient(config.endpoint)
        self.cache = VerdictCache(config.cache) if config.cache else None
        self.stats = JudgeStats()

    @property
    def id(self) -> str:
        """What identifies this judge's verdicts: model, prompts version and sampling temperature."""
        return self.config.id

    async def __aenter__(self) -> Judge:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.cache is not None:
            self.cache.close()

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        c = self.config
        return (prompt_tokens * c.usd_per_1m_input + completion_tokens * c.usd_per_1m_output) / 1e6

    async def _ask(
        self,
        kind: str,
        cache_texts: Sequence[str],
        messages: list[dict[str, str]],
        parse: Callable[[str], Parsed],
        reask: str,
    ) -> tuple[Verdict, Any]:
        """Ask the judge (or the cache); returns the verdict and the parsed value (None unless ok)."""
        key = VerdictCache.key(self.id, kind, *cache_texts) if self.cache is not None else ""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                value = json.loads(hit[0])
                return Verdict(status="ok", raw=hit[1], cached=True, judge=self.id), value
        verdict = Verdict(status="error", judge=self.id)
        for round_ in range(int(self.config.parse_retries) + 1):
            try:
                result = await self.client.complete(
                    messages, temperature=self.config.temperature, max_tokens=self.config.max_tokens
                )
            except ChatError as err:
                self.stats.errors += 1
                verdict.status, verdict.reason = "error", f"judge call failed: {err}"
                return verdict, None
            self.stats.calls += 1
            cost = self._cost(result.prompt_tokens, result.completion_tokens)
            self.stats.prompt_tokens += result.prompt_tokens
            self.stats.completion_tokens += result.completion_tokens
            self.stats.usage_estimated += 0 if result.usage_reported else 1
            self.stats.cost_usd += cost
            verdict.prompt_tokens += result.prompt_tokens
            verdict.completion_tokens += result.completion_tokens
            verdict.cost_usd += cost
            verdict.raw = result.text
            parsed = parse(result.text)
            if parsed.value is not None:
                verdict.status, verdict.reason = "ok", ""
                if self.cache is not None:
                    self.cache.put(key, self.id, kind, json.dumps(parsed.value), verdict)
                return verdict, parsed.value
            verdict.status, verdict.reason = "unparsed", f"unparsable verdict: {parsed.reason}"
            if round_ < self.config.parse_retries:
                self.stats.reasked += 1
                messages = [
                    *messages,
                    {"role": "assistant", "content": result.text},
                    {"role": "user", "content": reask},
                ]
        self.stats.unparsed += 1
        return verdict, None

    async def grade(self, prompt: str, answer: str, *, reference: str | None = None) -> Verdict:
        """Single-answer grading on a 1-10 scale (MT-Bench), against ``reference`` when given.

        Returns a :class:`Verdict`; ``quality = score / 10``. Never raises for an unreachable judge or an
        unreadable verdict: ``status`` says which and ``reason`` why.
        """
        if reference is None:
            user = SINGLE_TEMPLATE.format(question=prompt, answer=answer)
            kind, texts = "single", (prompt, answer)
        else:
            user = SINGLE_REFERENCE_TEMPLATE.format(question=prompt, answer=answer, reference=reference)
            kind, texts = "single-ref", (prompt, answer, reference)
        messages = [{"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": user}]
        verdict, value = await self._ask(kind, texts, messages, parse_rating, REASK_RATING)
        if value is not None:
            verdict.score, verdict.quality = float(value), float(value) / 10.0
        return verdict

    async def compare(self, prompt: str, first: str, second: str) -> PairwiseVerdict:
        """Compare two answers, asking once with ``first`` as assistant A and once as assistant B.

        Each order's verdict is mapped to the first answer's score (win 1, tie 0.5, loss 0); the result is
        their mean, so a judge that always prefers position A scores 0.5 (a tie) instead of a win.
        """

        async def one(a: str, b: str, first_is_a: bool) -> Verdict:
            user = PAIR_TEMPLATE.format(question=prompt, answer_a=a, answer_b=b)
            messages = [{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": user}]
            verdict, value = await self._ask(
                "pair", (prompt, a, b), messages, parse_preference, REASK_PREFERENCE
            )
            if value is not None:
                win_a = {"A": 1.0, "B": 0.0, "C": 0.5}[value]
                verdict.score = verdict.quality = win_a if first_is_a else 1.0 - win_a
            return verdict

        ab, ba = await asyncio.gather(one(first, second, True), one(second, first, False))
        if not (ab.ok and ba.ok):
            bad = ab if not ab.ok else ba
            status = "error" if "error" in (ab.status, ba.status) else "unparsed"
            return PairwiseVerdict(status, None, None, None, (ab, ba), reason=bad.reason)
        quality = (ab.score + ba.score) / 2
        winner = "first" if quality > 0.5 else "second" if quality < 0.5 else "tie"
        return PairwiseVerdict("ok", quality, winner, ab.score == ba.score, (ab, ba))
