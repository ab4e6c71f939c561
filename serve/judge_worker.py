"""The judge worker: a separate, low-priority process that grades the sampled answers, so that grading (the
judge's HTTP calls, their JSON, the feedback rows' durable commits) never takes the serving process's event
loop or GIL from a request.

The server (:class:`router_rl.serve.judging.JudgeSampler`) starts one :class:`JudgeWorker` (multiprocessing's
``spawn`` context: a fresh interpreter, nothing inherited from the server's threads) and hands it each sampled
answer as a :class:`Job` without ever waiting: past ``queue_size`` answers handed over and not graded yet, the
job is dropped at once (counted); the jobs of each :data:`FLUSH_S` go over together, as one message on a
multiprocessing queue. The worker runs at ``os.nice(19)``, so on a busy machine the server's
requests get the CPU first; on its own event loop it grades up to ``concurrency`` jobs at once with
:class:`Grader` (the same code the server runs when it grades in-process), opens its own
:class:`~router_rl.serve.decision_log.DecisionLog` on the server's log (sqlite in WAL mode or PostgreSQL: both
take writers from several processes) under the server's replica name, committing them in bursts, and sends
back a small :class:`Result` per grade (outcome, dollars spent, its pid), gathered into one message every
:data:`POLL_S`, which the server folds into its judge metrics and hourly judge budget.

A worker that dies (killed, crashed) is noticed by the thread that reads its results: the jobs it held are
counted as lost and the server restarts it or, past its restart limit, grades on its own event loop. At
shutdown the worker finishes what is queued within a time bound, then it is terminated; a worker whose server
died exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger("router_rl.serve")

POLL_S = 0.1  # how often the worker checks its stop event and its parent, and the server its worker
# the server hands its jobs over together every FLUSH_S: one wake-up of the queue's feeder thread for many (a
# wake-up per job cost the serving process ~0.12 ms of CPU each, measured on 2 cores)
FLUSH_S = 0.05


class Job(NamedTuple):
    """One answer to grade: ``pairwise`` (drawn by the server) also compares it with the reference model's
    answer to ``payload`` (the chat request)."""

    decision_id: str
    prompt: str
    answer: str
    payload: dict[str, Any] | None = None
    pairwise: bool = False


class Result(NamedTuple):
    """One grade's outcome: ``kind`` is ``grades`` or ``pairwise`` (the metric it counts in), ``cost_usd``
    what it spent (the judge's calls, and the reference answer's for ``pairwise``), ``pid`` who graded it,
    ``last`` whether the job is finished."""

    kind: str
    outcome: str
    cost_usd: float
    pid: int
    last: bool


@dataclass(frozen=True)
class JudgeSpec:
    """How to build the judge (picklable: the worker builds its own); calling it returns the
    :class:`router_rl.judge.Judge`."""

    base_url: str
    model: str
    api_key_env: str | None = None
    max_retries: int = 2
    usd_per_1m_input: float = 0.0
    usd_per_1m_output: float = 0.0

    def __call__(self) -> Any:
        from router_rl.judge import Endpoint, Judge, JudgeConfig

        endpoint = Endpoint(
            base_url=self.base_url,
            model=self.model,
            api_key_env=self.api_key_env,
            max_retries=self.max_retries,
        )
        return Judge(
            JudgeConfig(
                endpoint=endpoint,
                usd_per_1m_input=self.usd_per_1m_input,
                usd_per_1m_output=self.usd_per_1m_output,
            )
        )


@dataclass(frozen=True)
class ReferenceSpec:
    """The pairwise reference model: its catalog name, its upstream and catalog prices, and the longest wait
    for its answer."""

    model: str
    upstream: Any  # router_rl.serve.upstreams.Upstream
    usd_per_1m_input: float
    usd_per_1m_output: float
    timeout_s: float = 60.0


async def reference_answer(client: Any, spec: ReferenceSpec, payload: dict[str, Any]) -> tuple[str, float]:
    """The reference model's answer to a chat payload (asked without streaming) and its cost in dollars."""
    from router_rl.serve.judging import answer_text_of
    from router_rl.serve.upstreams import call_json

    request = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
    deadline = asyncio.get_running_loop().time() + spec.timeout_s
    attempt, _, data = await call_json(
        client, spec.upstream, {**request, "model": spec.upstream.model}, spec.model, deadline=deadline
    )
    if not attempt.ok or data is None:
        raise RuntimeError(f"reference model {spec.model}: {attempt.kind} {attempt.detail}".strip())
    text = answer_text_of(data)
    if text is None:
        raise RuntimeError(f"reference model {spec.model}: no answer text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(p, int) or not isinstance(c, int):
        return text, 0.0
    return text, (p * spec.usd_per_1m_input + c * spec.usd_per_1m_output) / 1e6


class Grader:
    """Grades a :class:`Job`: the judge's single grade (MT-Bench, quality = score / 10) stored as the
    decision's ``judge`` feedback, then for a pairwise job the served answer's win rate against the reference
    model's stored as ``pairwise`` feedback. Every outcome goes to ``report`` as a :class:`Result`; nothing
    raises.

    Args:
        judge_factory: builds the judge (called once, inside the running event loop).
        decision_log: where grades are written (``add_feedback``).
        reference: ``async (payload) -> (text, cost_usd)``, the reference model's answer (None: no pairwise).
    """

    def __init__(
        self,
        judge_factory: Callable[[], Any],
        decision_log: Any,
        reference: Callable[[dict[str, Any]], Awaitable[tuple[str, float]]] | None = None,
    ) -> None:
        self._factory = judge_factory
        self._judge: Any = None
        self.decision_log = decision_log
        self.reference = reference
        self.pid = os.getpid()

    def judge(self) -> Any:
        if self._judge is None:
            self._judge = self._factory()
        return self._judge

    async def grade(self, job: Job, report: Callable[[Result], None]) -> None:
        pairwise = job.pairwise and job.payload is not None and self.reference is not None
        outcome, cost = await self._single(job)
        report(Result("grades", outcome, cost, self.pid, not pairwise))
        if pairwise:
            outcome, cost = await self._compare(job)
            report(Result("pairwise", outcome, cost, self.pid, True))

    async def _single(self, job: Job) -> tuple[str, float]:
        try:
            verdict = await self.judge().grade(job.prompt, job.answer)
        except Exception as err:  # noqa: BLE001 - a judge failure must never reach a client or the loop
            log.warning("judge failed for decision %s: %s", job.decision_id, err)
            return "error", 0.0
        cost = float(verdict.cost_usd or 0.0)
        if not verdict.ok:
            return verdict.status, cost
        return await self._store(job.decision_id, verdict.quality, "judge"), cost

    async def _compare(self, job: Job) -> tuple[str, float]:
        assert self.reference is not None and job.payload is not None
        try:
            reference, cost = await self.reference(job.payload)
        except Exception as err:  # noqa: BLE001 - the reference model failed: count it, nothing else
            log.warning("reference answer for decision %s failed: %s", job.decision_id, err)
            return "reference_error", 0.0
        try:
            verdict = await self.judge().compare(job.prompt, job.answer, reference)
        except Exception as err:  # noqa: BLE001
            log.warning("pairwise judge failed for decision %s: %s", job.decision_id, err)
            return "error", float(cost)
        cost = float(cost) + float(verdict.cost_usd or 0.0)
        if not verdict.ok:
            return verdict.status, cost
        return await self._store(job.decision_id, verdict.quality, "pairwise"), cost

    async def _store(self, decision_id: str, quality: float, source: str) -> str:
        try:
            await asyncio.wrap_future(
                self.decision_log.add_feedback(decision_id, float(quality), source=source)
            )
        except Exception as err:  # noqa: BLE001 - e.g. the log is full: count it, the answer was served
            log.warning("%s grade of decision %s not stored: %s", source, decision_id, err)
            return "log_error"
        return "ok"

    async def aclose(self) -> None:
        if self._judge is not None:
            await self._judge.aclose()


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker process needs (pickled to it).

    Attributes:
        judge_factory: builds the judge (picklable: e.g. a :class:`JudgeSpec`).
        log_db: the decision log's URL or path (``--log-db``), opened by the worker for its feedback rows.
        replica: the server's replica name, written on those rows.
        reference: the pairwise reference model, or None.
        concurrency: jobs graded at once.
        commit_s: how long the worker gathers feedback rows before it commits them together.
        nice: the worker's niceness increment (19: the lowest CPU priority).
        log_level: the worker's logging level.
    """

    judge_factory: Callable[[], Any]
    log_db: str
    replica: str
    reference: ReferenceSpec | None = None
    concurrency: int = 16
    commit_s: float = 0.2
    nice: int = 19
    log_level: str = "WARNING"


# ------------------------------------------------------------------------------- inside the worker process


class FeedbackBursts:
    """The worker's feedback rows, handed to its :class:`~router_rl.serve.decision_log.DecisionLog` together
    every ``interval_s`` seconds, so one commit takes many: on sqlite the log has one write lock, and the
    server's decision commits then seldom wait for the worker's (which, at the lowest CPU priority, may hold
    it longer than the server would). :meth:`add_feedback` is the log's, its future resolving once the row is
    committed."""

    def __init__(self, decision_log: Any, interval_s: float) -> None:
        self.decision_log = decision_log
        self.interval_s = float(interval_s)
        self._pending: list[tuple[tuple, dict[str, Any], Future]] = []

    def add_feedback(self, decision_id: str, quality: float, **kwargs: Any) -> Future:
        future: Future = Future()
        self._pending.append(((decision_id, quality), kwargs, future))
        return future

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for args, kwargs, future in pending:
            try:
                stored = self.decision_log.add_feedback(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a bad row fails its own grade only
                future.set_exception(err)
                continue
            stored.add_done_callback(lambda done, future=future: _settle(future, done))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush()


def _settle(future: Future, done: Future) -> None:
    if done.exception() is not None:
        future.set_exception(done.exception())
    else:
        future.set_result(done.result())


def run_worker(config: WorkerConfig, jobs: Any, results: Any, stop: Any) -> None:
    """The worker process's entry point: grade the jobs from ``jobs`` until the server's stop (a None after
    them, or ``stop`` set with nothing queued) or until the server is gone, sending the :class:`Result` of
    each grade to ``results``."""
    with contextlib.suppress(OSError):
        os.nice(config.nice)
    level = getattr(logging, config.log_level.upper(), logging.INFO)  # uvicorn's "trace": INFO
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[judge worker]: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per judge call
    try:
        asyncio.run(_work(config, jobs, results, stop))
    finally:
        results.close()
        results.join_thread()  # every result sent before the process ends


def _next_jobs(jobs: Any, stop: Any, parent: int) -> list[Job] | None:
    """The next jobs the server handed over together, or None once stopping with nothing queued, or when the
    server is gone."""
    while True:
        try:
            return jobs.get(timeout=POLL_S)  # None: the server's stop, after the jobs queued before it
        except queue.Empty:
            if stop.is_set() or os.getppid() != parent:
                return None


async def _work(config: WorkerConfig, jobs: Any, results: Any, stop: Any) -> None:
    from router_rl.serve.decision_log import DecisionLog

    loop = asyncio.get_running_loop()
    decision_log = DecisionLog(config.log_db, replica=config.replica)
    client = reference = None
    if config.reference is not None:
        from router_rl.serve.upstreams import new_client

        spec = config.reference
        client = new_client(
            timeout_s=spec.timeout_s, connect_timeout_s=10.0, max_connections=config.concurrency
        )

        async def reference(payload: dict[str, Any]) -> tuple[str, float]:
            return await reference_answer(client, spec, payload)

    bursts = FeedbackBursts(decision_log, config.commit_s)
    flusher = asyncio.create_task(bursts.run())
    outbox: list[Result] = []  # sent together every POLL_S: the server wakes once for many grades

    async def send_results() -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if outbox:
                results.put(outbox[:])
                outbox.clear()

    sender = asyncio.create_task(send_results())
    grader = Grader(config.judge_factory, bursts, reference)
    slots = asyncio.Semaphore(config.concurrency)
    running: set[asyncio.Task] = set()
    parent = os.getppid()

    def finished(task: asyncio.Task) -> None:
        running.discard(task)
        slots.release()

    try:
        while True:
            batch = await loop.run_in_executor(None, _next_jobs, jobs, stop, parent)
            if batch is None:
                break
            for job in batch:
                await slots.acquire()
                task = asyncio.create_task(grader.grade(job, outbox.append))
                running.add(task)
                task.add_done_callback(finished)
        if running:
            await asyncio.wait(running)
    finally:
        flusher.cancel()
        bursts.flush()
        await grader.aclose()
        sender.cancel()
        if outbox:
            results.put(outbox[:])
        if client is not None:
            await client.close()
        await loop.run_in_executor(None, decision_log.close)


# ------------------------------------------------------------------------------- in the server process


class JudgeWorker:
    """One judge worker process, the queue its jobs go through, and the thread that reads its results.

    Args:
        config: what the process runs with.
        loop: the server's event loop (:meth:`submit` and :meth:`flush` run on it).
        queue_size: jobs handed over and not finished (waiting, or being graded) at most; :meth:`submit`
            refuses one more.
        on_result: called with each list of :class:`Result` the worker sends (from the reader thread).
        on_exit: called with this worker and the number of jobs it never finished, once its process has
            ended (from the reader thread).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        loop: asyncio.AbstractEventLoop,
        queue_size: int,
        on_result: Callable[[list[Result]], None],
        on_exit: Callable[[JudgeWorker, int], None],
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.jobs = ctx.Queue()  # of lists of jobs; bounded in jobs by queue_size
        self.jobs.cancel_join_thread()  # jobs a dead worker left never hold the server's exit
        self.results = ctx.Queue()
        self.stop_event = ctx.Event()
        self.process = ctx.Process(
            target=run_worker,
            args=(config, self.jobs, self.results, self.stop_event),
            name="router-rl-judge-worker",
            daemon=True,
        )
        self.loop = loop
        self.queue_size = int(queue_size)
        self.on_result = on_result
        self.on_exit = on_exit
        self._pending: list[Job] = []
        self._flush: asyncio.TimerHandle | None = None
        self.submitted = 0
        self.finished = 0
        self.exited = False
        self.stopping = False
        self._lock = threading.Lock()
        self._reap = threading.Lock()  # one thread at a time joins the process (the reader, stop())
        self._reader = threading.Thread(target=self._read, name="router-rl-judge-results", daemon=True)

    def start(self) -> JudgeWorker:
        self.process.start()
        self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def queued(self) -> int:
        """Jobs handed over and not finished yet."""
        return self.submitted - self.finished

    def submit(self, job: Job) -> bool:
        """Hand ``job`` over without waiting (it leaves with the others of the next :data:`FLUSH_S`); False
        when ``queue_size`` jobs are handed over and not finished, or the worker has ended."""
        with self._lock:
            if self.exited or self.stopping or self.submitted - self.finished >= self.queue_size:
                return False
            self.submitted += 1
        self._pending.append(job)
        if self._flush is None:
            self._flush = self.loop.call_later(FLUSH_S, self.flush)
        return True

    def flush(self) -> None:
        """Put the jobs submitted since the last flush on the queue, as one message."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self._pending = self._pending, []
        with self._lock:
            if batch and not self.exited:  # else lost with the worker (counted: submitted, not finished)
                self.jobs.put_nowait(batch)

    def _read(self) -> None:
        from multiprocessing.connection import wait

        while True:
            try:
                batch = self.results.get(timeout=POLL_S)  # the Results the worker gathered
            except queue.Empty:
                if wait([self.process.sentinel], timeout=0):  # ended, and every result it sent was read
                    break
                continue
            except (EOFError, OSError, pickle.UnpicklingError) as err:  # killed in the middle of a message
                log.warning("judge worker results unreadable: %s", err)
                break
            with self._lock:
                self.finished += sum(r.last for r in batch)
            try:
                self.on_result(batch)
            except Exception:  # noqa: BLE001 - the reader must outlive a bad callback
                log.exception("judge result not counted")
        with self._lock:
            self.exited = True
            lost = self.submitted - self.finished
        with self._reap:
            self.process.join(1.0)
        self.jobs.close()
        self.results.close()
        self.on_exit(self, lost)

    def stop(self, timeout_s: float) -> None:
        """Let the worker finish the jobs queued for up to ``timeout_s`` seconds, then terminate it (blocks:
        run it off the event loop, after a last :meth:`flush` on it)."""
        with self._lock:
            self.stopping = True
        if self.process.pid is None:  # never started
            return
        self.stop_event.set()
        with contextlib.suppress(queue.Full, ValueError):  # behind the queued jobs; a full queue: the event
            self.jobs.put_nowait(None)
        with self._reap:
            self.process.join(timeout_s)
            if self.process.exitcode is None:
                log.warning("judge worker %s still grading after %.1f s: terminated", self.pid, timeout_s)
                self.process.terminate()
                self.process.join(2.0)
            if self.process.exitcode is None:
                self.process.kill()
                self.process.join(2.0)
        self._reader.join(POLL_S * 4 + 5.0)
