"""Judge sampling: a share of answered chat requests graded by an LLM judge after the answer was sent.

For each answered chat request, streamed or not, with probability ``judge_share`` and while the judge's spend
over the last hour is under ``judge_budget_usd_per_hour``, the service schedules a background task (Starlette
runs it after the response body has gone out, so never on the request path) that hands the answer to the judge
worker (:mod:`router_rl.serve.judge_worker`: a separate process at the lowest CPU priority, fed by a bounded
queue, so grading never competes with requests for the event loop or the GIL). The worker grades it with
:class:`router_rl.judge.Judge` (MT-Bench single grade, quality = score / 10) and stores the grade as the
decision's feedback with ``source = 'judge'`` (a client's ``POST /v1/feedback`` is stored as ``client``; both
are kept, and readers prefer the client's grade where both exist: ``read_logged_bandit_data``'s
``feedback_source``, ``router-rl learn --feedback-source``); it sends back what happened and what it spent,
which counts here in the metrics and the hourly budget. With ``judge_worker`` off, or once a worker that kept
dying is given up, the same :class:`~router_rl.serve.judge_worker.Grader` runs on the server's event loop.
A judge that fails or answers unreadably is counted, never seen by the client. A streamed answer is graded on
the text of its content deltas, gathered as the events pass to the client (:class:`StreamText`: the stream
itself is untouched); a stream that broke or ended without ``data: [DONE]`` is not graded
(``router_rl_judge_skipped{reason="incomplete"}``).

Pairwise (``judge_pairwise_share`` of the graded answers, drawn here, with ``judge_reference_model``): the
reference model (a catalog model with an upstream) answers the same request too, and the judge compares the two
answers in both orders (:meth:`router_rl.judge.Judge.compare`, position bias cancelling); the served answer's
win rate (1 win, 0.5 tie, 0 loss, averaged over the orders) is stored with ``source = 'pairwise'``. Answers
that the reference model itself served are not compared. The reference answer's cost counts against the
judge's hourly budget. ``router_rl_judge_pairwise{outcome}`` (ok, error, unparsed, reference_error, log_error).

Metrics: ``router_rl_judge_grades{outcome}`` (ok, error, unparsed, log_error),
``router_rl_judge_skipped{reason}`` (sampled_out, budget, incomplete, queue_full: the worker's queue was full,
lost: handed to a worker that died or was stopped before grading it), ``router_rl_judge_spend_usd``,
``router_rl_judge_queued`` (answers handed to the worker, not graded yet), ``router_rl_judge_worker_up`` (1
while a worker process grades), ``router_rl_judge_worker_exits`` (workers that died unasked).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from router_rl.serve.judge_worker import Grader, Job, JudgeSpec, JudgeWorker, Result, WorkerConfig

log = logging.getLogger("router_rl.serve")


class JudgeSampler:
    """Decides which answers are graded, hands them to the judge worker (or grades them), and counts.

    Args:
        judge_factory: builds the :class:`~router_rl.judge.Judge` (called once, inside the event loop, when
            grading here).
        share: probability that an answered request is graded.
        budget_usd_per_hour: the judge's spend allowed over any trailing hour.
        decision_log: where grades are written (``add_feedback``) when grading here.
        registry: the Prometheus registry of the service's metrics.
        seed: seeds the sampling draws.
        clock: seconds (monotonic), for the spend window.
        pairwise_share: probability that a graded answer is also compared with the reference model's.
        reference_model: the model whose answers are the pairwise reference.
        reference: ``async (payload) -> (text, cost_usd)``: the reference model's answer to a chat payload.
        worker: the judge worker's configuration (None: grade on this event loop).
        queue_size: answers handed to the worker and not graded yet at most; past it they are dropped and
            counted.
        drain_s: at :meth:`aclose`, how long the worker may finish what is queued.
        max_restarts: workers started again after one died; then grading falls back to this event loop.
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
        worker: WorkerConfig | None = None,
        queue_size: int = 1000,
        drain_s: float = 5.0,
        max_restarts: int = 5,
    ) -> None:
        from prometheus_client import Counter, Gauge

        self.share = float(share)
        self.budget = float(budget_usd_per_hour)
        self.decision_log = decision_log
        self.rng = np.random.default_rng(seed)
        self.clock = clock
        self._spend: collections.deque[tuple[float, float]] = collections.deque()
        self.pairwise_share = float(pairwise_share)
        self.reference_model = reference_model
        self.reference = reference
        self.grader = Grader(judge_factory, decision_log, reference)
        self.worker_config = worker
        self.queue_size = int(queue_size)
        self.drain_s = float(drain_s)
        self.max_restarts = int(max_restarts)
        self.worker: JudgeWorker | None = None
        self.restarts = 0
        self.graded_by: collections.Counter[int] = collections.Counter()  # pid -> grades it sent back
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._restart_lock = threading.Lock()
        self.grades = Counter(
            "router_rl_judge_grades",
            "Judge gradings by outcome (ok, error, unparsed, log_error)",
            ["outcome"],
            registry=registry,
        )
        self.skipped = Counter(
            "router_rl_judge_skipped",
            "Answers not graded (sampled_out, budget, incomplete: a stream that did not end with [DONE], "
            "queue_full: the judge worker's queue was full, lost: its worker died or was stopped first)",
            ["reason"],
            registry=registry,
        )
        self.spend = Counter("router_rl_judge_spend_usd", "Dollars spent on the judge", registry=registry)
        self.pairwise = Counter(
            "router_rl_judge_pairwise",
            "Pairwise comparisons with the reference model by outcome (ok, error, unparsed, reference_error, "
            "log_error)",
            ["outcome"],
            registry=registry,
        )
        self.worker_exits = Counter(
            "router_rl_judge_worker_exits",
            "Judge worker processes that ended unasked (restarted up to judge_worker_max_restarts times)",
            registry=registry,
        )
        Gauge(
            "router_rl_judge_queued",
            "Answers handed to the judge worker and not graded yet",
            registry=registry,
        ).set_function(lambda: float(self.worker.queued) if self.worker is not None else 0.0)
        Gauge(
            "router_rl_judge_worker_up",
            "1 while a judge worker process grades, 0 when grading runs on the server's event loop",
            registry=registry,
        ).set_function(lambda: 1.0 if self.worker is not None and not self.worker.exited else 0.0)

    # ------------------------------------------------------------------ sampling and the budget
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

    def _fold(self, result: Result) -> None:
        """Count one grade's outcome and spend (on the event loop: the spend window is not thread-safe)."""
        self._spent(result.cost_usd)
        (self.grades if result.kind == "grades" else self.pairwise).labels(outcome=result.outcome).inc()
        self.graded_by[result.pid] += 1

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        """Start the judge worker (when configured); call inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        if self.worker_config is not None:
            self._start_worker()

    def _start_worker(self) -> None:
        assert self.worker_config is not None
        assert self._loop is not None
        worker = JudgeWorker(
            self.worker_config,
            loop=self._loop,
            queue_size=self.queue_size,
            on_result=self._on_result,
            on_exit=self._on_exit,
        )
        try:
            worker.start()
        except Exception as err:  # noqa: BLE001 - no process: grade here rather than not at all
            log.error("judge worker could not start (%s): grading on the event loop", err)
            self.worker = None
            return
        self.worker = worker
        log.info("judge worker started: pid %s", worker.pid)

    def _fold_all(self, results: list[Result]) -> None:
        for result in results:
            self._fold(result)

    def _on_result(self, results: list[Result]) -> None:  # the worker's reader thread
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("no event loop")
            loop.call_soon_threadsafe(self._fold_all, results)
        except RuntimeError:  # the loop is closed: nothing else runs on it now
            self._fold_all(results)

    def _on_exit(self, worker: JudgeWorker, lost: int) -> None:  # the worker's reader thread
        if lost:
            self.skipped.labels(reason="lost").inc(lost)
        if worker.stopping or self._closing:
            return
        self.worker_exits.inc()
        with self._restart_lock:
            if self._closing:
                return
            if self.restarts < self.max_restarts:
                self.restarts += 1
                log.error(
                    "judge worker %s exited with code %s (%d answers lost): restart %d of %d",
                    worker.pid,
                    worker.process.exitcode,
                    lost,
                    self.restarts,
                    self.max_restarts,
                )
                self._start_worker()
            else:
                log.error(
                    "judge worker %s exited with code %s (%d answers lost) after %d restarts: grading on the "
                    "event loop from now on",
                    worker.pid,
                    worker.process.exitcode,
                    lost,
                    self.restarts,
                )
                self.worker = None

    def describe(self) -> dict[str, Any]:
        """What ``/healthz`` shows of the judge."""
        worker = self.worker
        return {
            "share": self.share,
            "grading": "worker" if worker is not None else "event_loop",
            "worker_pid": worker.pid if worker is not None else None,
            "queued": worker.queued if worker is not None else 0,
            "worker_restarts": self.restarts,
            "spent_last_hour_usd": self.spent_last_hour(),
        }

    # ------------------------------------------------------------------ grading
    async def grade(
        self,
        decision_id: str,
        prompt: str,
        answer: str,
        *,
        payload: dict[str, Any] | None = None,
        model: str | None = None,
        logged: Future | None = None,
    ) -> None:
        """Grade ``answer`` and store it as the decision's feedback, then, for a ``pairwise_share`` of them
        (``payload``: the chat request, ``model``: who answered), compare it with the reference model's
        answer: in the judge worker when one runs (this returns once the job is queued), else here. ``logged``
        (the decision row's future) is awaited first, so the grade never reaches the log before its decision.
        Never raises."""
        if logged is not None:
            try:
                await asyncio.wrap_future(logged)
            except Exception:  # noqa: BLE001 - the decision was not logged: its grade cannot be stored
                self.grades.labels(outcome="log_error").inc()
                return
        pairwise = (
            payload is not None
            and self.reference is not None
            and self.pairwise_share > 0
            and model != self.reference_model
            and self.rng.random() < self.pairwise_share
            and self.spent_last_hour() < self.budget
        )
        job = Job(decision_id, prompt, answer, payload if pairwise else None, pairwise)
        worker = self.worker
        if worker is not None:
            if worker.submit(job):
                return
            if worker.stopping:  # the server is stopping: too late to grade
                self.skipped.labels(reason="lost").inc()
                return
            if not worker.exited:  # alive and full: drop, never wait
                self.skipped.labels(reason="queue_full").inc()
                return
        await self.grader.grade(job, self._fold)  # no worker (or it just died): grade here

    async def grade_stream(self, decision_id: str, prompt: str, text: StreamText, **kwargs: Any) -> None:
        """Grade a streamed answer once its stream has ended (the response's background task)."""
        answer = text.answer()
        if answer is None:
            self.skipped.labels(reason="incomplete").inc()
            return
        await self.grade(decision_id, prompt, answer, **kwargs)

    async def aclose(self) -> None:
        """Stop the worker (it finishes what is queued for up to ``drain_s``, then is terminated) and close
        the judge."""
        self._closing = True
        with self._restart_lock:
            worker = self.worker
        if worker is not None:
            worker.flush()
            await asyncio.get_running_loop().run_in_executor(None, worker.stop, self.drain_s)
        with contextlib.suppress(Exception):
            await self.grader.aclose()


def from_settings(
    settings: Any, decision_log: Any, registry: Any, reference: Any = None, reference_spec: Any = None
) -> JudgeSampler:
    """The sampler of ``settings`` (``judge_*``), judging through an OpenAI-compatible endpoint;
    ``reference`` answers for the pairwise comparisons on this event loop, ``reference_spec``
    (:class:`~router_rl.serve.judge_worker.ReferenceSpec`) in the worker (see :class:`JudgeSampler`)."""
    spec = JudgeSpec(
        base_url=settings.judge_url,
        model=settings.judge_model,
        api_key_env=settings.judge_api_key_env,
        max_retries=settings.judge_max_retries,
        usd_per_1m_input=settings.judge_usd_per_1m_input,
        usd_per_1m_output=settings.judge_usd_per_1m_output,
    )
    target = getattr(decision_log, "target", None)
    worker = None
    if settings.judge_worker and target is not None:
        worker = WorkerConfig(
            judge_factory=spec,
            log_db=str(target.path) if target.kind == "sqlite" else str(target.url),
            replica=decision_log.replica,
            reference=reference_spec,
            concurrency=settings.judge_concurrency,
            log_level=settings.log_level,
        )
    return JudgeSampler(
        spec,
        share=settings.judge_share,
        budget_usd_per_hour=settings.judge_budget_usd_per_hour,
        decision_log=decision_log,
        registry=registry,
        seed=settings.seed,
        pairwise_share=settings.judge_pairwise_share,
        reference_model=settings.judge_reference_model,
        reference=reference,
        worker=worker,
        queue_size=settings.judge_queue_size,
        drain_s=settings.judge_drain_s,
        max_restarts=settings.judge_worker_max_restarts,
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
