"""Judge sampling: a share of answered chat requests graded by an LLM judge after the answer was sent.

For each answered chat request, streamed or not, with probability ``judge_share`` and while the judge's spend
over the last hour is under ``judge_budget_usd_per_hour``, the service schedules a background task (Starlette
runs it after the response body has gone out, so never on the request path) that grades the answer with
:class:`router_rl.judge.Judge` (MT-Bench single grade, quality = score / 10) and stores the grade as the
decision's feedback with ``source = 'judge'`` (a client's ``POST /v1/feedback`` is stored as ``client``;
both are kept, and readers prefer the client's grade where both exist: ``read_logged_bandit_data``'s
``feedback_source``, ``router-rl learn --feedback-source``). A judge that fails or answers unreadably is
counted, never seen by the client. A streamed answer is graded on the text of its content deltas, gathered
as the events pass to the client (:class:`StreamText`: the stream itself is untouched); a stream that broke
or ended without ``data: [DONE]`` is not graded (``router_rl_judge_skipped{reason="incomplete"}``).

Pairwise (``judge_pairwise_share`` of the graded answers, with ``judge_reference_model``): the reference
model (a catalog model with an upstream) answers the same request too, and the judge compares the two answers
in both orders (:meth:`router_rl.judge.Judge.compare`, position bias cancelling); the served answer's win rate
(1 win, 0.5 tie, 0 loss, averaged over the orders) is stored with ``source = 'pairwise'``. Answers that the
reference model itself served are not compared. The reference answer's cost counts against the judge's
hourly budget. ``router_rl_judge_pairwise{outcome}`` (ok, error, unparsed, reference_error, log_error).

Metrics: ``router_rl_judge_grades{outcome}`` (ok, error, unparsed, log_error),
``router_rl_judge_skipped{reason}`` (sampled_out, budget, incomplete), ``router_rl_judge_spend_usd``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

log = logging.getLogger("router_rl.serve")


class JudgeSampler:
    """Decides which answers are graded and grades them.

    Args:
        judge_factory: builds the :class:`~router_rl.judge.Judge` (called once, inside the event loop).
        share: probability that an answered request is graded.
        budget_usd_per_hour: the judge's spend allowed over any trailing hour.
        decision_log: where grades are written (``add_feedback``).
        registry: the Prometheus registry of the service's metrics.
        seed: seeds the sampling draws.
        clock: seconds (monotonic), for the spend window.
        pairwise_share: probability that a graded answer is also compared with the reference model's.
        reference_model: the model whose answers are the pairwise reference.
        reference: ``async (payload) -> (text, cost_usd)``: the reference model's answer to a chat payload.
    """

    def __init__(
        self,
        judge_factory: Callable[[], Any],
        *,
        share: float,
        budget_usd_per_hour: float,
        decision_log: Any,
        registry: Any,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        pairwise_share: float = 0.0,
        reference_model: str | None = None,
        reference: Callable[[dict[str, Any]], Awaitable[tuple[str, float]]] | None = None,
    ) -> None:
        from prometheus_client import Counter

        self._factory = judge_factory
        self._judge: Any = None
        self.share = float(share)
        self.budget = float(budget_usd_per_hour)
        self.decision_log = decision_log
        self.rng = np.random.default_rng(seed)
        self.clock = clock
        self._spend: collections.deque[tuple[float, float]] = collections.deque()
        self.grades = Counter(
            "router_rl_judge_grades",
            "Judge gradings by outcome (ok, error, unparsed, log_error)",
            ["outcome"],
            registry=registry,
        )
        self.skipped = Counter(
            "router_rl_judge_skipped",
            "Answers not graded (sampled_out, budget, incomplete: a stream that did not end with [DONE])",
            ["reason"],
            registry=registry,
        )
        self.spend = Counter("router_rl_judge_spend_usd", "Dollars spent on the judge", registry=registry)
        self.pairwise_share = float(pairwise_share)
        self.reference_model = reference_model
        self.reference = reference
        self.pairwise = Counter(
            "router_rl_judge_pairwise",
            "Pairwise comparisons with the reference model by outcome (ok, error, unparsed, reference_error, "
            "log_error)",
            ["outcome"],
            registry=registry,
        )

    def spent_last_hour(self) -> float:
        now = self.clock()
        while self._spend and self._spend[0][0] <= now - 3600.0:
            self._spend.popleft()
        return sum(c for _, c in self._spend)

    def sample(self) -> bool:
        """Whether to grade this answer: drawn with probability ``share``, and only under the hourly budget."""
        if self.rng.random() >= self.share:
            self.skipped.labels(reason="sampled_out").inc()
            return False
        if self.spent_last_hour() >= self.budget:
            self.skipped.labels(reason="budget").inc()
            return False
        return True

    def _spent(self, cost: float) -> None:
        if cost:
            self._spend.append((self.clock(), float(cost)))
            self.spend.inc(float(cost))

    async def grade(
        self,
        decision_id: str,
        prompt: str,
        answer: str,
        *,
        payload: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        """Grade ``answer`` and store it as the decision's feedback, then, for a ``pairwise_share`` of them
        (``payload``: the chat request, ``model``: who answered), compare it with the reference model's
        answer; never raises."""
        await self._grade(decision_id, prompt, answer)
        if (
            payload is not None
            and self.reference is not None
            and self.pairwise_share > 0
            and model != self.reference_model
            and self.rng.random() < self.pairwise_share
            and self.spent_last_hour() < self.budget
        ):
            await self._compare(decision_id, prompt, answer, payload)

    async def _compare(self, decision_id: str, prompt: str, answer: str, payload: dict[str, Any]) -> None:
        assert self.reference is not None
        try:
            reference, cost = await self.reference(payload)
        except Exception as err:  # noqa: BLE001 - the reference model failed: count it, nothing else
            log.warning("reference answer for decision %s failed: %s", decision_id, err)
            self.pairwise.labels(outcome="reference_error").inc()
            return
        self._spent(cost)
        try:
            if self._judge is None:
                self._judge = self._factory()
            verdict = await self._judge.compare(prompt, answer, reference)
        except Exception as err:  # noqa: BLE001
            log.warning("pairwise judge failed for decision %s: %s", decision_id, err)
            self.pairwise.labels(outcome="error").inc()
            return
        self._spent(verdict.cost_usd)
        if not verdict.ok:
            self.pairwise.labels(outcome=verdict.status).inc()
            return
        try:
            stored = self.decision_log.add_feedback(decision_id, float(verdict.quality), source="pairwise")
            await asyncio.wrap_future(stored)
        except Exception as err:  # noqa: BLE001
            log.warning("pairwise grade of decision %s not stored: %s", decision_id, err)
            self.pairwise.labels(outcome="log_error").inc()
            return
        self.pairwise.labels(outcome="ok").inc()

    async def _grade(self, decision_id: str, prompt: str, answer: str) -> None:
        try:
            if self._judge is None:
                self._judge = self._factory()
            verdict = await self._judge.grade(prompt, answer)
        except Exception as err:  # noqa: BLE001 - a judge failure must never reach a client or the loop
            log.warning("judge failed for decision %s: %s", decision_id, err)
            self.grades.labels(outcome="error").inc()
            return
        self._spent(verdict.cost_usd)
        if not verdict.ok:
            self.grades.labels(outcome=verdict.status).inc()
            return
        try:
            await asyncio.wrap_future(
                self.decision_log.add_feedback(decision_id, float(verdict.quality), source="judge")
            )
        except Exception as err:  # noqa: BLE001 - e.g. the log is full: count it, the answer was served
            log.warning("judge grade of decision %s not stored: %s", decision_id, err)
            self.grades.labels(outcome="log_error").inc()
            return
        self.grades.labels(outcome="ok").inc()

    async def grade_stream(self, decision_id: str, prompt: str, text: StreamText, **kwargs: Any) -> None:
        """Grade a streamed answer once its stream has ended (the response's background task)."""
        answer = text.answer()
        if answer is None:
            self.skipped.labels(reason="incomplete").inc()
            return
        await self.grade(decision_id, prompt, answer, **kwargs)

    async def aclose(self) -> None:
        if self._judge is not None:
            await self._judge.aclose()


def from_settings(settings: Any, decision_log: Any, registry: Any, reference: Any = None) -> JudgeSampler:
    """The sampler of ``settings`` (``judge_*``), judging through an OpenAI-compatible endpoint;
    ``reference`` answers for the pairwise comparisons (see :class:`JudgeSampler`)."""

    def factory() -> Any:
        from router_rl.judge import Endpoint, Judge, JudgeConfig

        endpoint = Endpoint(
            base_url=settings.judge_url,
            model=settings.judge_model,
            api_key_env=settings.judge_api_key_env,
            max_retries=settings.judge_max_retries,
        )
        return Judge(
            JudgeConfig(
                endpoint=endpoint,
                usd_per_1m_input=settings.judge_usd_per_1m_input,
                usd_per_1m_output=settings.judge_usd_per_1m_output,
            )
        )

    return JudgeSampler(
        factory,
        share=settings.judge_share,
        budget_usd_per_hour=settings.judge_budget_usd_per_hour,
        decision_log=decision_log,
        registry=registry,
        seed=settings.seed,
        pairwise_share=settings.judge_pairwise_share,
        reference_model=settings.judge_reference_model,
        reference=reference,
    )


def answer_text(response: Any) -> str | None:
    """The assistant's text of a non-streamed chat completion response (None when there is none)."""
    import json

    try:
        return answer_text_of(json.loads(response.body))
    except (AttributeError, TypeError, ValueError):
        return None


def answer_text_of(data: Any) -> str | None:
    """The assistant's text of a parsed chat completion body (None when there is none)."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) and content else None


class StreamText:
    """The assistant's text of a streamed chat completion, gathered from its server-sent events as they pass.

    :meth:`relay` wraps the response's body iterator: every chunk goes on to the client unchanged, and the
    ``choices[0].delta.content`` of each ``data:`` event is appended. :meth:`answer` is the text when the
    stream ended with ``data: [DONE]`` and no error event, else None.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.done = False
        self.failed = False
        self._pending = ""

    def feed(self, chunk: bytes | str) -> None:
        import json

        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()  # an unfinished line waits for the next chunk
        for line in lines:
            line = line.rstrip("\r")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                self.failed = True
                continue
            try:
                content = event["choices"][0]["delta"].get("content")
            except (KeyError, IndexError, TypeError, AttributeError):
                continue
            if isinstance(content, str):
                self.parts.append(content)

    async def relay(self, body: Any) -> Any:
        """``body`` (an async iterator of chunks), passed through while its text is gathered."""
        async for chunk in body:
            self.feed(chunk)
            yield chunk

    def answer(self) -> str | None:
        text = "".join(self.parts)
        return text if self.done and not self.failed and text else None
