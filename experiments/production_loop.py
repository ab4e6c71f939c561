"""The production loop end to end (issue 14): a bundled dataset's prompts replayed as traffic through the real
``router-rl serve`` (HTTP on loopback), answered by a local OpenAI-compatible upstream, graded by the server's
own judge sampling (``--judge-share``) against a local stub judge that answers the recorded grade of (prompt,
model) plus noise, and ``router-rl learn`` (its library function, the same code) run every ``--every``
requests, its candidate promoted into the running server (``POST /admin/reload``) only when its off-policy
estimate says so. The static starting policy serves the same traffic with the same exploration as the control.

    python experiments/production_loop.py              # 3 seeds x 3,000 prompts, learn every 500 (~4 min)
    python experiments/production_loop.py --n-prompts 13000 --every 1000 \
        --out experiments/results/production_loop_full  # the full size (~11 min): 13,000 of the 13,776
                                                        # unique prompts outside each seed's starting 10%
    python experiments/production_loop.py --n-prompts 4800 --every 800 --rate 40 --budget-usd-per-hour 55 \
        --out experiments/results/production_loop_budget  # serve's spend pacer on a steady stream (~13 min)
    python experiments/production_loop.py --n-prompts 13000 --every 1000 --gate difference --margin 0 \
        --out experiments/results/production_loop_paired_full  # learn's paired gate at the full size (~18 min)
    python experiments/production_loop.py --n-prompts 13000 --every 1000 --estimate-split 0.3 \
        --out experiments/results/production_loop_honest_split03  # learn's default split: the gate decides on
                                                                   # 70% of the held-out rows, the reported
                                                                   # value comes from the other 30% (~18 min)
    python experiments/production_loop.py --n-prompts 13000 --every 1000 --estimate-split 0.5 \
        --seeds 0 1 2 3 4 5 --out experiments/results/production_loop_honest  # half and half, 6 seeds (~37 min)
    python experiments/production_loop.py --rescore experiments/results/production_loop_full.json
                                        # recompute a result's prediction intervals and summary, no replay

Per seed: a 10% sample of the prompts (``--start-share``) trains the starting policy (``router_rl.training``:
the default lowrank_warm policy, ``embedder=static`` with ``embedder.distill.fit=null``: the distilled
token-lookup encoder, 500+ prompts/s on this CPU where MiniLM does ~13 prompts/s cold, so a replay of thousands
of prompts fits); ``--n-prompts`` of the
other prompts (unique texts, in a seeded order) are the traffic. Each window of ``--every`` requests records:

- quality (recorded grade of the model that answered), cost per prompt, spend, reward at the served cost weight,
  regret against the oracle (per prompt the best recorded reward), all on the recorded table (the truth);
- after it: ``learn`` on the champion's logged, judged decisions (``policy_version`` = the champion), its
  ope.json (IPS/SNIPS/DR of candidate and champion with intervals), the decision, and for every candidate
  the value it realised on the next window's prompts (its greedy choice on their logged contexts, rewarded by
  the judge's expected grade: what the OPE estimates), beside the champion's realised value on those prompts,
  and the 95% prediction intervals for those realised values (``router_rl.ope.prediction_interval``: ope.json's
  confidence interval is for the policy's value; a window's mean has its own spread on top), both from the rows
  that decided and, with ``--estimate-split`` > 0, from ope.json's ``value_estimate`` (held-out rows the
  decision never saw: selection-free). Target (b) is scored on the selection-free intervals when there are any.

Writes experiments/results/production_loop.{json,md,png}.

The judge: ``rating = clip(1 + 9 * quality + 10 * noise * N(0, 1), 1, 10)``, quality = rating / 10 (the
serve judge's MT-Bench single grade); the OPE's target is therefore the expected judged reward
``E[rating] / 10 - w * cost / cost_scale`` (closed form for a clipped normal), and realised values use the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
ADMIN_TOKEN = "production-loop-admin"
JUDGE_MODEL = "stub-judge"
ANSWER_RE = re.compile(r"answer to row (\d+) by ([\w.\-]+)")


# ---------------------------------------------------------------------------------------------- the judge


def judged_mean(quality: np.ndarray, noise: float) -> np.ndarray:
    """E[clip(1 + 9 q + s Z, 1, 10)] / 10 with s = 10 * noise, Z ~ N(0, 1): the stub judge's expected quality.

    For X ~ N(mu, s^2) clipped to [a, b]: E = a Phi(al) + b (1 - Phi(be)) + mu (Phi(be) - Phi(al))
    + s (phi(al) - phi(be)), al = (a - mu) / s, be = (b - mu) / s."""
    mu = 1.0 + 9.0 * np.asarray(quality, dtype=np.float64)
    s = 10.0 * float(noise)
    if s <= 0:
        return np.clip(mu, 1.0, 10.0) / 10.0
    from scipy.stats import norm

    al, be = (1.0 - mu) / s, (10.0 - mu) / s
    e = 1.0 * norm.cdf(al) + 10.0 * norm.sf(be) + mu * (norm.cdf(be) - norm.cdf(al))
    e += s * (norm.pdf(al) - norm.pdf(be))
    return e / 10.0


class Stub:
    """One OpenAI-compatible server on loopback that is both the upstream (every catalog model: it answers
    ``answer to row R by MODEL`` with the recorded token usage of (R, MODEL)) and the judge (model
    ``stub-judge``: it finds that line in the graded answer and rates it ``Rating: [[x.xx]]`` from the recorded
    grade plus noise). The row comes from a system message the router does not route on (it routes on the last
    user message)."""

    def __init__(self, quality: np.ndarray, tokens_in: np.ndarray, tokens_out: np.ndarray, models: list[str]):
        self.quality, self.tokens_in, self.tokens_out = quality, tokens_in, tokens_out
        self.models = list(models)
        self.noise, self.seed = 0.0, 0
        self.judged = 0
        self.answered = 0
        self.unmatched = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = stub.answer(json.loads(raw or b"{}"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server_cls = type("StubServer", (ThreadingHTTPServer,), {"request_queue_size": 64})
        self._server = server_cls(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def rating(self, row: int, k: int) -> float:
        rng = np.random.default_rng([self.seed, row, k, 14])
        mu = 1.0 + 9.0 * float(self.quality[row, k])
        return float(np.clip(mu + 10.0 * self.noise * rng.standard_normal(), 1.0, 10.0))

    def answer(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        messages = req.get("messages") or []
        model = str(req.get("model", ""))
        if model == JUDGE_MODEL:
            m = ANSWER_RE.search(str(messages[-1].get("content", "")) if messages else "")
            if m is None or m.group(2) not in self.models:
                with self._lock:
                    self.unmatched += 1
                text, usage = "I cannot tell.", (10, 3)
            else:
                row, k = int(m.group(1)), self.models.index(m.group(2))
                text, usage = f"The answer is as recorded. Rating: [[{self.rating(row, k):.2f}]]", (200, 12)
                with self._lock:
                    self.judged += 1
        else:
            if model not in self.models:
                return 404, {"error": {"message": f"no model {model!r}", "type": "not_found"}}
            m = re.search(r"row (\d+)", str(messages[0].get("content", "")) if messages else "")
            if m is None:
                return 400, {"error": {"message": "no row in the system message", "type": "bad_request"}}
            row, k = int(m.group(1)), self.models.index(model)
            text = f"answer to row {row} by {model}"
            usage = (int(self.tokens_in[row, k]), int(self.tokens_out[row, k]))
            with self._lock:
                self.answered += 1
        return 200, {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }

    def __enter__(self) -> Stub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------------- the server


class Serve:
    """``router-rl serve`` in a subprocess on a free loopback port."""

    def __init__(self, artifact: Path, workdir: Path, args: list[str], *, startup_timeout_s: float = 120.0):
        from router_rl.serve.testing import free_port

        self.port = free_port()
        self.log_db = workdir / "decisions.sqlite"
        exe = shutil.which("router-rl") or str(Path(sys.executable).with_name("router-rl"))
        self.cmd = [
            exe,
            "serve",
            str(artifact),
            "--port",
            str(self.port),
            "--log-db",
            f"sqlite:///{self.log_db}",
            "--admin-token",
            ADMIN_TOKEN,
            "--log-level",
            "warning",
            *args,
        ]
        self.stderr = open(workdir / "serve.log", "w")  # noqa: SIM115 - closed in __exit__
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Serve:
        import httpx

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=self.stderr, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"router-rl serve exited with {self.proc.returncode}: see {self.stderr.name}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"router-rl serve did not start in {self.startup_timeout_s}s")
            time.sleep(0.2)

    def reload(self, artifact: Path) -> dict[str, Any]:
        import httpx

        r = httpx.post(
            f"{self.url}/admin/reload",
            json={"artifact": str(artifact)},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=120,
        )
        r.raise_for_status()
        return r.json()

    def judged_count(self) -> int:
        with sqlite3.connect(f"file:{self.log_db}?mode=ro", uri=True, timeout=30) as con:
            return int(con.execute("SELECT count(DISTINCT decision_id) FROM feedback").fetchone()[0])

    def wait_for_grades(self, n: int, timeout_s: float = 120.0) -> int:
        """Wait until ``n`` decisions have a grade (the judge runs after each answer); returns the count."""
        deadline = time.monotonic() + timeout_s
        got = self.judged_count()
        while got < n and time.monotonic() < deadline:
            time.sleep(0.1)
            got = self.judged_count()
        return got

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# ---------------------------------------------------------------------------------------------- the replay


@dataclass
class Traffic:
    """The truth the replay is scored on (rows of the dataset)."""

    prompts: np.ndarray
    quality: np.ndarray  # (n, K)
    cost_usd: np.ndarray  # (n, K)
    tokens_in: np.ndarray
    tokens_out: np.ndarray
    models: list[str]
    cost_scale: float


def send_window(
    url: str,
    traffic: Traffic,
    rows: np.ndarray,
    cost_weight: float,
    concurrency: int,
    rate: float = 0.0,
    origin: tuple[float, int] = (0.0, 0),
) -> dict:
    """POST one chat request per row; returns {decision_id: row} and the model that answered each row.

    ``rate`` > 0: the replay's request j leaves at ``t0 + j / rate`` (``origin = (t0, index of this window's
    first request)``), one steady stream over the whole replay whose spend per hour the budget pacer can
    hold (after the pause of a learn the stream catches up); else requests go as fast as the server answers."""
    from router_rl.serve.testing import http_load

    answered: dict[int, tuple[str, str]] = {}
    t0, first = origin

    def body(i: int) -> dict[str, Any]:
        if rate > 0:  # the load generator's own event loop waits: a blocking sleep paces every connection
            time.sleep(max(0.0, t0 + (first + i) / rate - time.perf_counter()))
        row = int(rows[i])
        return {
            "model": f"router-{cost_weight:g}",
            "messages": [
                {"role": "system", "content": f"replay row {row}"},
                {"role": "user", "content": str(traffic.prompts[row])},
            ],
        }

    def on_response(i: int, status: int, headers: dict[str, str], _body: bytes) -> None:
        if status == 200:
            answered[i] = (headers["x-router-decision-id"], headers["x-router-model"])

    result = asyncio.run(
        http_load(url, "/v1/chat/completions", body, len(rows), concurrency, on_response=on_response)
    )
    if len(answered) != len(rows):
        raise RuntimeError(f"{len(rows) - len(answered)} of {len(rows)} requests failed: {result.statuses}")
    return {
        "decision_row": {answered[i][0]: int(rows[i]) for i in range(len(rows))},
        "action": np.array([traffic.models.index(answered[i][1]) for i in range(len(rows))]),
        "seconds": result.seconds,
    }


def window_metrics(traffic: Traffic, rows: np.ndarray, action: np.ndarray, w: float) -> dict[str, float]:
    q = traffic.quality[rows]
    c = traffic.cost_usd[rows]
    r = q - w * c / traffic.cost_scale
    idx = np.arange(len(rows))
    served = r[idx, action]
    return {
        "quality": float(q[idx, action].mean()),
        "cost_usd": float(c[idx, action].mean()),
        "spend_usd": float(c[idx, action].sum()),
        "reward": float(served.mean()),
        "regret": float((r.max(axis=1) - served).mean()),
        "oracle_reward": float(r.max(axis=1).mean()),
        "strong_share": float((action == int(np.argmax(traffic.cost_usd.mean(axis=0)))).mean()),
    }


def linear_predictions(artifact: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A linear artifact's predictions on contexts ``x`` (n, d): quality, cost / cost_scale, and latency times
    its latency weight, each (n, K)."""
    from router_rl.serve.artifact import load_artifact

    art = load_artifact(artifact, device="cpu")
    xb = np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])
    theta = {h: art.tensors[h].double().numpy() for h in ("theta_quality", "theta_cost", "theta_latency")}
    lam = float(art.manifest.get("latency_weight", 0.0))
    return xb @ theta["theta_quality"].T, xb @ theta["theta_cost"].T, lam * (xb @ theta["theta_latency"].T)


def linear_scores(artifact: Path, x: np.ndarray, w: float) -> np.ndarray:
    """(n, K) greedy scores of a linear artifact on contexts ``x`` (n, d) at cost weight ``w``."""
    q, c, lat = linear_predictions(artifact, x)
    return q - w * c - lat


def aiq_of(
    artifact: Path, x: np.ndarray, quality: np.ndarray, cost: np.ndarray, weights: list[float]
) -> float:
    """AIQ (RouterBench) of a linear artifact's greedy choices on contexts ``x`` over a sweep of cost weights,
    scored on the recorded ``quality`` and ``cost`` (n, K); the cost axis ends at the dearest model's mean."""
    from router_rl.metrics import aiq

    q_hat, c_hat, lat = linear_predictions(artifact, x)
    idx = np.arange(len(x))
    costs, quals = [], []
    for w in weights:
        a = np.argmax(q_hat - w * c_hat - lat, axis=1)
        costs.append(cost[idx, a].mean())
        quals.append(quality[idx, a].mean())
    return float(aiq(np.array(costs), np.array(quals), max_cost=float(cost.mean(axis=0).max())))


def judged_value(traffic: Traffic, rows: np.ndarray, action: np.ndarray, w: float, noise: float) -> float:
    """Mean expected judged reward of ``action`` on ``rows``: what the OPE of a greedy policy estimates."""
    idx = np.arange(len(rows))
    g = judged_mean(traffic.quality[rows][idx, action], noise)
    return float((g - w * traffic.cost_usd[rows][idx, action] / traffic.cost_scale).mean())


def prediction_intervals(cand: dict[str, Any], n_next: int) -> dict[str, Any]:
    """The candidate's prediction intervals (:func:`router_rl.ope.prediction_interval`) for what it realises
    on the ``n_next`` prompts of the next window, from what learn's ope.json holds (estimate, confidence
    interval, rows evaluated): its value, and the candidate - champion difference (the paired estimate)."""
    from router_rl.ope import Estimate, prediction_interval

    n = int(cand.get("n_decision", cand["n_evaluated"]))  # the rows the decision's estimates came from
    value = Estimate(cand["estimator"], cand["estimate"], cand["ci_low"], cand["ci_high"], n, float("nan"))
    out: dict[str, Any] = {"n_next": int(n_next), "prediction": list(prediction_interval(value, n_next))}
    if "difference" in cand:
        d = cand["difference"]
        diff = Estimate("difference", d[0], d[1], d[2], n, float("nan"))
        out["difference_prediction"] = list(prediction_interval(diff, n_next))
    v = cand.get("value")
    if v is not None:  # ope.json's value_estimate: the estimate rows (selection-free when the split is on)
        est = Estimate(cand["estimator"], v["estimate"], v["ci_low"], v["ci_high"], int(v["n"]), float("nan"))
        d = v["difference"]
        diff = Estimate("difference", d[0], d[1], d[2], int(v["n"]), float("nan"))
        out["value_prediction"] = list(prediction_interval(est, n_next))
        out["value_difference_prediction"] = list(prediction_interval(diff, n_next))
    return out


@dataclass
class ArmResult:
    windows: list[dict[str, Any]] = field(default_factory=list)
    learns: list[dict[str, Any]] = field(default_factory=list)
    final_artifact: Path | None = None


def run_arm(
    *,
    traffic: Traffic,
    rows: np.ndarray,
    start: Path,
    workdir: Path,
    stub: Stub,
    opts: argparse.Namespace,
    seed: int,
    learning: bool,
    log: Callable[[str], None] = print,
) -> ArmResult:
    """Serve ``rows`` in windows of ``opts.every`` through one ``router-rl serve``; learn and promote if
    ``learning``. Every candidate's realised value is measured on the next window's logged contexts."""
    from router_rl.learn import LearnError, learn
    from router_rl.serve.decision_log import read_logged_bandit_data

    shutil.rmtree(workdir, ignore_errors=True)  # a fresh decision log per arm
    workdir.mkdir(parents=True)
    w = float(opts.cost_weight)
    serve_args = [
        "--upstream",
        stub.base_url,
        "--log-embeddings",
        "--explore-softmax-temperature",
        str(opts.temperature),
        "--explore-bonus",
        str(opts.bonus),
        "--judge-share",
        str(opts.judge_share),
        "--judge-url",
        stub.base_url,
        "--judge-model",
        JUDGE_MODEL,
        "--judge-budget-usd-per-hour",
        "1000",
        "--seed",
        str(seed),
    ]
    if opts.budget_usd_per_hour > 0:
        serve_args += ["--budget-usd-per-hour", str(opts.budget_usd_per_hour)]
        serve_args += ["--budget-update-s", str(opts.budget_update_s)]
        serve_args += ["--budget-window-s", str(opts.budget_window_s), "--budget-step", str(opts.budget_step)]
    out = ArmResult()
    champion = start
    pending: list[dict[str, Any]] = []  # candidates of the last learn, realised on the next window
    n_windows = int(math.ceil(len(rows) / opts.every))
    with Serve(start, workdir, serve_args) as server:
        sent = 0
        for win in range(n_windows):
            wrows = rows[win * opts.every : (win + 1) * opts.every]
            t0 = time.perf_counter()
            if win == 0:
                t_origin = time.perf_counter()
            t_send = time.perf_counter() - t_origin
            res = send_window(server.url, traffic, wrows, w, opts.concurrency, opts.rate, (t_origin, sent))
            t_sent = time.perf_counter() - t_origin
            sent += len(wrows)
            graded = server.wait_for_grades(sent)
            seconds = time.perf_counter() - t0
            data = read_logged_bandit_data(server.log_db)
            ids = set(res["decision_row"])
            mine = np.array([d in ids for d in data.decision_id])
            order = [res["decision_row"][d] for d in data.decision_id[mine]]
            x = data.contexts[mine]
            col = np.array([data.models.index(m) for m in traffic.models])
            logged_greedy = np.nanargmax(data.scores[mine][:, col], axis=1)
            logged_rows = np.array(order)
            metrics = window_metrics(traffic, wrows, res["action"], w)
            greedy = window_metrics(traffic, logged_rows, logged_greedy, w)
            greedy_of = dict(zip(logged_rows.tolist(), logged_greedy.tolist(), strict=True))
            explored = float(
                np.mean([greedy_of[int(r)] != a for r, a in zip(wrows, res["action"], strict=True)])
            )
            entry = {
                "window": win,
                "n": len(wrows),
                "graded": graded,
                "seconds": seconds,
                "requests_per_s": len(wrows) / res["seconds"],
                "send_seconds": res["seconds"],
                "t_send_start": t_send,  # seconds since the replay's first request
                "t_send_end": t_sent,
                "spend_usd_per_hour": float(traffic.cost_usd[wrows, res["action"]].sum())
                / res["seconds"]
                * 3600,
                "policy_version": str(data.policy_version[mine][-1]),
                **metrics,
                "greedy_reward": greedy["reward"],
                "greedy_quality": greedy["quality"],
                "explored_share": explored,
                "served_judged_value": judged_value(traffic, wrows, res["action"], w, opts.judge_noise),
                # the same from the decision log: the server's judged feedback and measured cost
                "logged_judged_value": float(np.nanmean(data.rewards()[mine])),
            }
            # realised values of the last learn's candidates (and of their champion) on this window's prompts
            for cand in pending:
                a_cand = np.argmax(linear_scores(cand["artifact"], x, w), axis=1)
                a_champ = np.argmax(linear_scores(cand["champion_artifact"], x, w), axis=1)
                cand["realised"] = judged_value(traffic, logged_rows, a_cand, w, opts.judge_noise)
                cand["champion_realised"] = judged_value(traffic, logged_rows, a_champ, w, opts.judge_noise)
                cand["realised_reward"] = window_metrics(traffic, logged_rows, a_cand, w)["reward"]
                cand["champion_realised_reward"] = window_metrics(traffic, logged_rows, a_champ, w)["reward"]
                cand["realised_window"] = win
                cand.update(prediction_intervals(cand, len(logged_rows)))
                if cand["promoted"]:  # the server now serves it greedily: its logged choices are these
                    cand["served_greedy_agrees"] = float((a_cand == logged_greedy).mean())
                cand.pop("artifact"), cand.pop("champion_artifact")
            pending = []
            if opts.budget_usd_per_hour > 0:
                import httpx

                entry["budget"] = httpx.get(f"{server.url}/healthz", timeout=10).json().get("budget")
            out.windows.append(entry)
            log(
                f"  window {win}: reward {entry['reward']:.4f} (greedy {entry['greedy_reward']:.4f}) quality "
                f"{entry['quality']:.3f} cost ${entry['cost_usd'] * 1e3:.3f}/1k regret {entry['regret']:.4f} "
                f"graded {graded}/{sent} {entry['requests_per_s']:.0f} req/s"
            )
            if not learning or win == n_windows - 1:
                continue
            from router_rl.serve.artifact import load_artifact

            version = load_artifact(champion, device="cpu").version
            learn_dir = workdir / f"learn{win}"
            try:
                rep = learn(
                    f"sqlite:///{server.log_db}",
                    champion,
                    learn_dir,
                    margin=opts.margin,
                    gate=opts.gate,
                    holdout=opts.holdout,
                    estimate_split=opts.estimate_split,
                    level=opts.level,
                    policy_version=version,
                ).ope
            except LearnError as err:
                log(f"  learn after window {win}: {err}")
                continue
            est = rep["estimator"]
            cand = {
                "after_window": win,
                "champion_version": rep["champion_version"],
                "candidate_version": rep["candidate_version"],
                "n_learned": rep["n_learned"],
                "n_evaluated": rep["n_evaluated"],
                "n_decision": rep["split"]["n_decision"],
                "ess": rep["ess"],
                "estimator": est,
                "estimate": rep["candidate"][est]["value"],
                "ci_low": rep["candidate"][est]["ci_low"],
                "ci_high": rep["candidate"][est]["ci_high"],
                "champion_estimate": rep["champion"][est]["value"],
                "champion_ci": [rep["champion"][est]["ci_low"], rep["champion"][est]["ci_high"]],
                "all_estimates": {"candidate": rep["candidate"], "champion": rep["champion"]},
                "promoted": bool(rep["decision"]["promote"]),
                "difference": [
                    rep["difference"]["value"],
                    rep["difference"]["ci_low"],
                    rep["difference"]["ci_high"],
                ],
                "value": {
                    "selection_free": rep["value_estimate"]["selection_free"],
                    "n": rep["value_estimate"]["n"],
                    "estimate": rep["value_estimate"]["candidate"][est]["value"],
                    "ci_low": rep["value_estimate"]["candidate"][est]["ci_low"],
                    "ci_high": rep["value_estimate"]["candidate"][est]["ci_high"],
                    "difference": [
                        rep["value_estimate"]["difference"]["value"],
                        rep["value_estimate"]["difference"]["ci_low"],
                        rep["value_estimate"]["difference"]["ci_high"],
                    ],
                },
                "artifact": learn_dir / "artifact",
                "champion_artifact": champion,
            }
            if cand["promoted"]:
                server.reload(learn_dir / "artifact")
                champion = learn_dir / "artifact"
            v = cand["value"]
            log(
                f"  learn after window {win}: {rep['n_learned']} learned, {est} candidate {cand['estimate']:.4f} "
                f"[{cand['ci_low']:.4f}, {cand['ci_high']:.4f}] vs champion {cand['champion_estimate']:.4f}: "
                f"{'PROMOTED' if cand['promoted'] else 'kept champion'}; value on {v['n']} estimate rows "
                f"{v['estimate']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]"
            )
            out.learns.append(cand)
            pending.append(cand)
    for cand in pending:  # the last learn has no next window
        cand.pop("artifact", None), cand.pop("champion_artifact", None)
    out.final_artifact = champion
    return out


# ---------------------------------------------------------------------------------------------- setup


def compose_cfg(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module

    with initialize_config_module("router_rl.configs", version_base=None):
        return compose("train", overrides=["mlflow.enabled=false", "registry.name=null", *overrides])


def train_start(setup: Any, cfg: Any, rows: np.ndarray, out: Path, seed: int) -> Path:
    """The starting policy: the configured policy trained on ``rows`` only, exported as a serving artifact."""
    from router_rl import training as T
    from router_rl.export import export_artifact, model_entries

    policy = T.make_policy(cfg.policy, list(setup.data.models), int(setup.embeddings.shape[1]))
    T.fit_policy(policy, setup, rows, cfg=cfg, seed=seed)
    context = {
        "catalog_models": model_entries(setup.data.catalog),
        "embedder": setup.embedder.manifest(int(setup.embeddings.shape[1])),
        "cost_scale": setup.cost_scale,
        "cost_weight": setup.cost_weight,
        "latency_weight": setup.latency_weight,
        "dataset": setup.data.name,
    }
    return export_artifact(policy, context, out)


def seed_rows(n_total: int, unique: np.ndarray, seed: int, start_share: float, n_prompts: int):
    """(start rows, traffic rows): a seeded ``start_share`` of all prompts, then traffic from the others."""
    rng = np.random.default_rng([seed, 2014])
    perm = rng.permutation(n_total)
    n_start = int(round(start_share * n_total))
    start = np.sort(perm[:n_start])
    rest = perm[n_start:]
    rest = rest[unique[rest]]
    if n_prompts > len(rest):
        raise ValueError(
            f"--n-prompts {n_prompts}: only {len(rest)} unique prompts are outside the start set"
        )
    return start, rest[:n_prompts]


def budget_check(seeds: dict[Any, dict[str, Any]], target: float, rate: float = 0.0) -> dict[str, Any]:
    """Spend rate ($/h) against the target, per seed and arm: over the last third of the windows and over the
    whole replay, each as its spend over the stream's time (``rate`` > 0: from the time the schedule sent the
    first of its requests, ``j / rate``, to the last answer; a window that starts late after a learn's pause
    begins with the requests that arrived during the pause), and the last third also over the wall time from
    its first send to its last answer (the measure before; it leaves the pause out of the time but not its
    requests)."""
    if target <= 0:
        return {"measured": False, "why": "the replay ran without --budget-usd-per-hour (serve's pacer off)"}
    out: dict[str, Any] = {"measured": True, "target_usd_per_hour": target}
    for arm in ("loop", "static"):
        stream, wall, whole = [], [], []
        for res in seeds.values():
            ws = res[arm]["windows"]
            last = ws[len(ws) - max(1, len(ws) // 3) :]
            spend = sum(w["spend_usd"] for w in last)
            end = last[-1]["t_send_end"]
            first = sum(w["n"] for w in ws[: len(ws) - len(last)])  # index of the last third's first request
            scheduled = first / rate if rate > 0 else last[0]["t_send_start"]
            stream.append(spend / (end - scheduled) * 3600)
            wall.append(spend / (end - last[0]["t_send_start"]) * 3600)
            whole.append(sum(w["spend_usd"] for w in ws) / (end - ws[0]["t_send_start"]) * 3600)
        out[arm] = {
            "usd_per_hour": stream,
            "relative_error": [r / target - 1 for r in stream],
            "wall_usd_per_hour": wall,
            "wall_relative_error": [r / target - 1 for r in wall],
            "whole_usd_per_hour": whole,
            "whole_relative_error": [r / target - 1 for r in whole],
        }
    errors = out["loop"]["relative_error"] + out["static"]["relative_error"]
    wall_errors = out["loop"]["wall_relative_error"] + out["static"]["wall_relative_error"]
    whole_errors = out["loop"]["whole_relative_error"] + out["static"]["whole_relative_error"]
    out["met"] = bool(all(abs(e) <= 0.03 for e in errors))
    out["wall_met"] = bool(all(abs(e) <= 0.03 for e in wall_errors))
    out["whole_met"] = bool(all(abs(e) <= 0.03 for e in whole_errors))
    out["rule"] = (
        "every seed's and arm's last-third spend rate (over the stream's time) within 3% of the target"
    )
    return out


def summarise(
    seeds: dict[int, dict[str, Any]], margin: float, budget: float = 0.0, rate: float = 0.0
) -> dict[str, Any]:
    """Target checks over seeds (see the module docstring and production_loop.md)."""
    diffs, loop_last, static_last = [], [], []
    for res in seeds.values():
        lw, sw = res["loop"]["windows"], res["static"]["windows"]
        third = max(1, len(lw) // 3)
        lr = float(np.mean([w["reward"] for w in lw[-third:]]))
        sr = float(np.mean([w["reward"] for w in sw[-third:]]))
        loop_last.append(lr)
        static_last.append(sr)
        diffs.append(lr - sr)
    diffs_a = np.array(diffs)
    aiq_d = [r["loop"]["aiq_last_third"] - r["static"]["aiq_last_third"] for r in seeds.values()]
    spread = float(diffs_a.std(ddof=1)) if len(diffs_a) > 1 else float("nan")
    promos = [c for r in seeds.values() for c in r["loop"]["learns"] if c["promoted"] and "realised" in c]
    inside = [c["ci_low"] <= c["realised"] <= c["ci_high"] for c in promos]
    inside_pred = [c["prediction"][0] <= c["realised"] <= c["prediction"][1] for c in promos]
    every = [c for r in seeds.values() for c in r["loop"]["learns"] if "realised" in c]
    inside_all = [c["ci_low"] <= c["realised"] <= c["ci_high"] for c in every]
    inside_pred_all = [c["prediction"][0] <= c["realised"] <= c["prediction"][1] for c in every]
    drops = [c["realised_reward"] - c["champion_realised_reward"] for c in promos]
    # the selection-free intervals (ope.json value_estimate on rows the decision never saw), when learn split
    free = [c for c in every if c.get("value", {}).get("selection_free")]
    free_promos = [c for c in free if c["promoted"]]

    def inside_value(cs: list[dict[str, Any]], key: str) -> int:
        if key == "ci":
            return int(sum(c["value"]["ci_low"] <= c["realised"] <= c["value"]["ci_high"] for c in cs))
        return int(sum(c["value_prediction"][0] <= c["realised"] <= c["value_prediction"][1] for c in cs))

    scored_on_free = bool(promos) and len(free_promos) == len(promos)
    scored = (
        inside_value(free_promos, "pi") / len(promos)
        if scored_on_free
        else (float(np.mean(inside_pred)) if promos else float("nan"))
    )
    paired = [c for c in every if "difference" in c]  # the paired interval of candidate - champion
    inside_diff = [
        c["difference"][1] <= c["realised"] - c["champion_realised"] <= c["difference"][2] for c in paired
    ]
    inside_diff_pred = [
        c["difference_prediction"][0]
        <= c["realised"] - c["champion_realised"]
        <= c["difference_prediction"][1]
        for c in paired
    ]
    reward_met = bool(diffs_a.mean() > 0 and (diffs_a > 0).all() and diffs_a.mean() > spread)
    aiq_met = bool(np.mean(aiq_d) > 0 and min(aiq_d) > 0 and np.mean(aiq_d) > np.std(aiq_d, ddof=1))
    return {
        "a_last_third": {
            "met": reward_met or aiq_met,
            "loop_reward": loop_last,
            "static_reward": static_last,
            "difference": diffs,
            "mean_difference": float(diffs_a.mean()),
            "spread_sd": spread,
            "reward_met": reward_met,
            "rule": "every seed's last-third reward above the static control's, and the mean difference above "
            "the sd of the differences over seeds",
            "aiq_loop": [r["loop"]["aiq_last_third"] for r in seeds.values()],
            "aiq_static": [r["static"]["aiq_last_third"] for r in seeds.values()],
            "aiq_difference": aiq_d,
            "aiq_met": aiq_met,
        },
        "b_ope": {
            "n_learns": sum(len(r["loop"]["learns"]) for r in seeds.values()),
            "n_promotions": len(promos),
            "inside_interval": int(sum(inside)),
            "share_inside": float(np.mean(inside)) if inside else float("nan"),
            "inside_prediction": int(sum(inside_pred)),
            "share_inside_prediction": float(np.mean(inside_pred)) if inside_pred else float("nan"),
            "realised_minus_champion": drops,
            "worst_change": float(min(drops)) if drops else float("nan"),
            "all_learns_inside": int(sum(inside_all)),
            "all_learns_inside_prediction": int(sum(inside_pred_all)),
            "all_learns_realised": len(every),
            "mean_abs_realised_candidate_minus_champion": float(
                np.mean([abs(c["realised"] - c["champion_realised"]) for c in every])
            )
            if every
            else float("nan"),
            "all_learns_difference_inside": int(sum(inside_diff)),
            "all_learns_difference_inside_prediction": int(sum(inside_diff_pred)),
            "mean_realised_difference": float(
                np.mean([c["realised"] - c["champion_realised"] for c in every])
            )
            if every
            else float("nan"),
            "all_learns_with_difference": len(paired),
            "selection_free_learns": len(free),
            "selection_free_promotions": len(free_promos),
            "selection_free_inside_interval": inside_value(free_promos, "ci"),
            "selection_free_inside_prediction": inside_value(free_promos, "pi"),
            "selection_free_all_learns_inside": inside_value(free, "ci"),
            "selection_free_all_learns_inside_prediction": inside_value(free, "pi"),
            "scored_on": "selection-free estimate rows (ope.json value_estimate)"
            if scored_on_free
            else "the decision's own rows",
            "scored_share_inside_prediction": scored,
            "margin": margin,
            "met": bool(promos) and scored >= 0.9 and min(drops) >= -abs(margin) - 1e-12,
            "rule": "realised value inside the candidate's 95% prediction interval for the next window's mean in "
            ">= 90% of promotions (the selection-free interval when learn split its held-out rows), and no promoted "
            "candidate's realised reward below the replaced champion's (same next-window prompts) by more than "
            "|margin|",
        },
        "c_budget": budget_check(seeds, budget, rate),
    }


# ---------------------------------------------------------------------------------------------- report


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    seeds = result["seeds"]
    every = result["config"]["every"]
    fig = plt.figure(figsize=(13, 15))
    grid = fig.add_gridspec(4, 2, hspace=0.42, wspace=0.22, top=0.93, bottom=0.05, left=0.07, right=0.98)
    panels = [
        ("reward", "reward at the served cost weight (served, exploration included)"),
        ("reward_diff", "loop minus static control: reward per window"),
        ("quality", "quality (recorded grade of the model that answered)"),
        ("cost_usd", "cost per prompt (USD)"),
        ("regret", "regret vs the oracle (per prompt)"),
        ("spend_usd", "spend per window (USD)"),
    ]
    budget = float(result["config"].get("budget_usd_per_hour", 0.0))
    if budget > 0:  # the pacer's view: the spend rate while sending, against its target
        panels[-1] = (
            "spend_usd_per_hour",
            f"spend rate while sending (USD/h); target {budget:g} USD/h (black line)",
        )
    colors = plt.cm.tab10.colors
    for j, (key, title) in enumerate(panels):
        ax = fig.add_subplot(grid[j // 2, j % 2])
        for i, res in enumerate(seeds.values()):
            lw, sw = res["loop"]["windows"], res["static"]["windows"]
            xs = [w["window"] + 1 for w in lw]
            if key == "reward_diff":
                ax.plot(
                    xs,
                    [a["reward"] - b["reward"] for a, b in zip(lw, sw, strict=True)],
                    "-o",
                    color=colors[i],
                    ms=4,
                )
                ax.axhline(0.0, color="black", lw=0.8)
            else:
                ax.plot(xs, [w[key] for w in lw], "-o", color=colors[i], ms=4)
                ax.plot(xs, [w[key] for w in sw], "--", color=colors[i], alpha=0.6)
            if key == "spend_usd_per_hour" and i == 0:
                ax.axhline(budget, color="black", lw=1.0)
            for c in res["loop"]["learns"]:
                if c["promoted"] and c["after_window"] + 1 < len(lw):
                    ax.axvline(c["after_window"] + 1.5 + 0.04 * i, color=colors[i], lw=1.0, ls=":", alpha=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"window ({every} requests each)", fontsize=9)
        ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[3, :])
    k, ticks = 0, []
    for i, (seed, res) in enumerate(seeds.items()):
        for c in res["loop"]["learns"]:
            if "realised" not in c:
                continue
            promoted = c["promoted"]
            ax.errorbar(
                k,
                c["estimate"],
                yerr=[[c["estimate"] - c["ci_low"]], [c["ci_high"] - c["estimate"]]],
                fmt="o" if promoted else "x",
                color=colors[i],
                capsize=3,
                alpha=1.0 if promoted else 0.35,
            )
            if "prediction" in c:  # the prediction interval for the next window's mean, beside it
                lo, hi = c["prediction"]
                ax.plot([k + 0.15, k + 0.15], [lo, hi], "-", color=colors[i], lw=4, alpha=0.25)
            ax.plot(
                k + 0.3, c["realised"], "*", color="black" if promoted else "grey", ms=10 if promoted else 7
            )
            ticks.append((k, f"s{seed}\nw{c['after_window'] + 1}"))
            k += 1
    ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=7)
    ax.set_title(
        "every learn: candidate's DR estimate and 95% CI (o promoted, x kept champion), 95% prediction interval "
        "for the next window's mean (bar), realised there (*); judged units",
        fontsize=10,
    )
    ax.set_xlabel("learn (seed s, after window w)", fontsize=9)
    ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=colors[i], marker="o", ms=4, label=f"seed {s}") for i, s in enumerate(seeds)
    ]
    handles += [
        Line2D([], [], color="grey", ls="-", label="loop (learn + promote)"),
        Line2D([], [], color="grey", ls="--", label="static starting policy (control)"),
        Line2D([], [], color="grey", ls=":", label="promotion (reload)"),
        Line2D([], [], color="black", marker="*", ls="", ms=9, label="realised next window"),
    ]
    fig.legend(
        handles=handles, loc="upper center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 0.965)
    )
    fig.suptitle(
        f"production loop: {result['config']['data']}, {result['config']['n_prompts']} prompts/seed, "
        f"cost weight {result['config']['cost_weight']}, judge noise {result['config']['judge_noise']}, "
        f"margin {result['config']['margin']}",
        fontsize=11,
        y=0.99,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_md(result: dict[str, Any], path: Path) -> None:
    cfg, s = result["config"], result["summary"]
    a, b = s["a_last_third"], s["b_ope"]
    lines = [
        "# Production loop (issue 14)",
        "",
        "Made by `experiments/production_loop.py` "
        f"(`{result['command']}`), {result['minutes']:.1f} min on the 2-core development machine.",
        "",
        f"{cfg['data']} prompts replayed as traffic through `router-rl serve` (HTTP on loopback, a stub upstream "
        f"answering with the recorded token usage, judge sampling `--judge-share {cfg['judge_share']}` against a "
        f"stub judge that returns the recorded grade plus N(0, {cfg['judge_noise']}) noise); the starting policy "
        f"({cfg['policy']}, `embedder=static embedder.distill.fit=null`: the distilled token-lookup encoder, "
        f"chosen so thousands of prompts replay in minutes on this CPU; MiniLM embeds ~13 prompts/s cold here) "
        f"trained on "
        f"{cfg['start_share']:.0%} of the prompts; {cfg['n_prompts']} other prompts per seed; `learn` every "
        f"{cfg['every']} requests on the champion's judged decisions, promoted by `POST /admin/reload` when the "
        + (
            f"the paired DR difference's lower bound exceeds margin {cfg['margin']} (`--gate difference`); "
            if cfg.get("gate") == "difference"
            else f"DR lower bound beats the champion's DR estimate + margin {cfg['margin']}; "
        )
        + (
            f"the gate decides on {1 - cfg['estimate_split']:.0%} of the held-out rows and the candidate's reported "
            f"value comes from the other {cfg['estimate_split']:.0%} (`--estimate-split {cfg['estimate_split']}`); "
            if cfg.get("estimate_split", 0) > 0
            else "the gate and the reported value use the same held-out rows (`--estimate-split 0`); "
        )
        + f"bonus-softmax exploration "
        f"T={cfg['temperature']}, bonus {cfg['bonus']} in both arms; served cost weight {cfg['cost_weight']}. "
        f"Seeds {list(result['seeds'])}. The control serves the same traffic with the static starting policy.",
        "",
        "## Targets",
        "",
        f"(a) **{'met' if a['met'] else 'not met'}**: last third of the loop vs the static control, reward at the "
        f"served cost weight (served, exploration included): loop {_ms(a['loop_reward'])}, static "
        f"{_ms(a['static_reward'])}; difference per seed {', '.join(f'{d:+.4f}' for d in a['difference'])} "
        f"(mean {a['mean_difference']:+.4f}, sd over seeds {a['spread_sd']:.4f}): "
        f"{'met' if a['reward_met'] else 'not met'}. AIQ over the cost-weight sweep of the policy serving at the "
        f"end, on the last third's prompts (recorded outcomes): loop {_ms(a['aiq_loop'])}, static "
        f"{_ms(a['aiq_static'])}; difference per seed {', '.join(f'{d:+.4f}' for d in a['aiq_difference'])}: "
        f"{'met' if a['aiq_met'] else 'not met'}. Rule (either measure): {a['rule']}.",
        "",
        f"(b) **{'met' if b['met'] else 'not met'}**: {b['n_promotions']} promotions in {b['n_learns']} learns; "
        + (
            f"scored on the selection-free intervals (`value_estimate`, {cfg['estimate_split']:.0%} of the held-out "
            "rows, which the decision never saw): realised value inside the candidate's 95% prediction interval "
            f"for the next window's mean in {b['selection_free_inside_prediction']} of {b['n_promotions']} "
            f"({b['scored_share_inside_prediction']:.0%}; target >= 90%), inside its 95% confidence interval in "
            f"{b['selection_free_inside_interval']} of {b['n_promotions']}; over every learn inside the "
            f"prediction interval in {b['selection_free_all_learns_inside_prediction']} of "
            f"{b['selection_free_learns']}, inside the confidence interval in "
            f"{b['selection_free_all_learns_inside']}. On the rows that decided (the same-data intervals): "
            if b.get("selection_free_promotions", 0) and b["selection_free_promotions"] == b["n_promotions"]
            else ""
        )
        + f"realised value inside the candidate's 95% prediction interval for the next window's mean in "
        f"{b.get('inside_prediction', 0)} of {b['n_promotions']} ({b.get('share_inside_prediction', float('nan')):.0%}; "
        f"target >= 90%), inside its 95% confidence interval (for the policy's value, not for a window's mean) in "
        f"{b['inside_interval']} of {b['n_promotions']}; realised reward of the promoted candidate minus the "
        f"replaced champion's on the same next-window prompts: worst {b['worst_change']:+.4f} (margin "
        f"{b['margin']}). Rule: {b['rule']}. Over every learn (promoted or not): realised inside the prediction "
        f"interval in {b.get('all_learns_inside_prediction', 0)} of {b['all_learns_realised']}, inside the "
        f"confidence interval in {b['all_learns_inside']}; candidate and champion realised values differ by "
        f"{b['mean_abs_realised_candidate_minus_champion']:.4f} on average (mean candidate - champion "
        f"{b.get('mean_realised_difference', float('nan')):+.4f}); the realised difference inside the paired "
        f"difference's 95% prediction interval in {b.get('all_learns_difference_inside_prediction', 0)} of "
        f"{b.get('all_learns_with_difference', 0)}, inside its confidence interval in "
        f"{b.get('all_learns_difference_inside', 0)}.",
        "",
        _budget_line(s["c_budget"]),
        "",
        "## Windows (mean over seeds)",
        "",
        "| window | loop reward | static reward | loop greedy reward | loop quality | static quality | "
        "loop cost $/1k | static cost $/1k | loop regret | static regret | loop spend $ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seeds = list(result["seeds"].values())
    n_w = len(seeds[0]["loop"]["windows"])
    for i in range(n_w):

        def m(arm: str, key: str, scale: float = 1.0, i: int = i) -> str:
            return f"{np.mean([r[arm]['windows'][i][key] for r in seeds]) * scale:.4f}"

        lines.append(
            f"| {i + 1} | {m('loop', 'reward')} | {m('static', 'reward')} | {m('loop', 'greedy_reward')} | "
            f"{m('loop', 'quality')} | {m('static', 'quality')} | {m('loop', 'cost_usd', 1e3)} | "
            f"{m('static', 'cost_usd', 1e3)} | {m('loop', 'regret')} | {m('static', 'regret')} | "
            f"{m('loop', 'spend_usd')} |"
        )
    split = float(cfg.get("estimate_split", 0.0))
    lines += [
        "",
        "## Learns",
        "",
        "Estimate and confidence interval (CI): DR of the candidate's greedy policy on the held-out newest "
        f"{cfg.get('holdout', 0.3):.0%} of the champion's judged decisions"
        + (
            f" that decided ({1 - split:.0%} of them; selection-free: the other {split:.0%}, a seeded split)"
            if split > 0
            else ""
        )
        + ", in judged units (rating / 10 minus the "
        "cost term): an interval for the policy's value. Prediction interval (PI): for the mean it realises on the "
        "next window's prompts, CI half-width x sqrt(1 + n_evaluated / n_next) (`router_rl.ope.prediction_interval`)"
        ". Realised: the candidate's greedy choices on the next window's logged contexts, rewarded by the judge's "
        "expected grade. Difference: the paired DR estimate of candidate - champion (learn's gate with "
        "`--gate difference`), with its CI and PI, against the realised candidate - champion on the next window.",
        "",
        "| seed | after window | learned | ESS | candidate DR [95% CI] | 95% PI | champion DR | promoted | realised | "
        "champion realised | in CI | in PI | difference [95% CI] | 95% PI | realised difference | in CI | in PI |"
        + (" selection-free DR [95% CI] | 95% PI | in CI | in PI |" if split > 0 else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|---|---|---|" if split > 0 else ""),
    ]

    def yes(low: float, x: float, high: float) -> str:
        return "yes" if low <= x <= high else "no"

    for seed, res in result["seeds"].items():
        for c in res["loop"]["learns"]:
            real = c.get("realised")
            row = (
                f"| {seed} | {c['after_window'] + 1} | {c['n_learned']} | {c['ess']['candidate']:.0f} | "
                f"{c['estimate']:.4f} [{c['ci_low']:.4f}, {c['ci_high']:.4f}] | "
                + (f"[{c['prediction'][0]:.4f}, {c['prediction'][1]:.4f}]" if "prediction" in c else "-")
                + f" | {c['champion_estimate']:.4f} | {'yes' if c['promoted'] else 'no'} | "
            )
            if real is None:
                row += "- | - | - | - | "
            else:
                row += (
                    f"{real:.4f} | {c['champion_realised']:.4f} | {yes(c['ci_low'], real, c['ci_high'])} | "
                    f"{yes(*c['prediction'][:1], real, c['prediction'][1])} | "
                )
            d = c.get("difference")
            if d is None:
                row += "- | - | - | - | - |"
            else:
                row += f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] | "
                if real is None:
                    row += "- | - | - | - |"
                else:
                    dp, rd = c["difference_prediction"], real - c["champion_realised"]
                    row += f"[{dp[0]:+.4f}, {dp[1]:+.4f}] | {rd:+.4f} | {yes(d[1], rd, d[2])} | {yes(dp[0], rd, dp[1])} |"
            if split > 0:
                v = c["value"]
                row += f" {v['estimate']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}] | "
                if real is None:
                    row += "- | - | - |"
                else:
                    vp = c["value_prediction"]
                    row += (
                        f"[{vp[0]:.4f}, {vp[1]:.4f}] | {yes(v['ci_low'], real, v['ci_high'])} | "
                        f"{yes(vp[0], real, vp[1])} |"
                    )
            lines.append(row)
    lines += ["", f"![production loop]({path.with_suffix('.png').name})", ""]
    path.write_text("\n".join(lines))


def _budget_line(c: dict[str, Any]) -> str:
    if not c["measured"]:
        return f"(c) not measured: {c['why']}."

    def rates(key: str) -> str:
        return "; ".join(
            f"{arm} {', '.join(f'{r:.2f}' for r in c[arm][key + 'usd_per_hour'])} $/h "
            f"({', '.join(f'{e:+.1%}' for e in c[arm][key + 'relative_error'])})"
            for arm in ("loop", "static")
        )

    line = (
        f"(c) **{'met' if c['met'] else 'not met'}**: spend rate over the last third of the replay (its spend over "
        f"the stream's time: from the scheduled send of its first request to its last answer, learn pauses "
        f"included) against the target {c['target_usd_per_hour']:g} $/h: {rates('')}. Rule: {c['rule']}."
    )
    if "wall_usd_per_hour" in c["loop"]:
        line += (
            f" The same over the wall time from the last third's first send (the measure before, which counts the "
            f"requests that arrived during the pause before it but not the pause; "
            f"{'within' if c['wall_met'] else 'not within'} 3%): {rates('wall_')}. Over the whole replay "
            f"({'within' if c['whole_met'] else 'not within'} 3%): {rates('whole_')}."
        )
    return line + (
        " The replay lasts minutes, not hours: the pacer holds the rate of its --budget-window-s window and pays "
        "the excess of the hour so far back over four windows."
    )


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--data", default="routellm", help="bundled dataset (data=...)")
    p.add_argument(
        "--embedder", default="static", help="embedder config (static: the distilled token lookup)"
    )
    p.add_argument("--policy", default="lowrank_warm", help="policy config of the starting policy")
    p.add_argument("--n-prompts", type=int, default=3000, help="prompts replayed per seed")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (traffic, start set, judge)"
    )
    p.add_argument("--every", type=int, default=500, help="requests between learns")
    p.add_argument("--judge-noise", type=float, default=0.1, help="sd of the judge's noise, in quality units")
    p.add_argument(
        "--judge-share", type=float, default=1.0, help="share of answers the server's judge grades"
    )
    p.add_argument(
        "--start-share", type=float, default=0.1, help="share of prompts the start policy trains on"
    )
    p.add_argument(
        "--train-steps", type=int, default=2000, help="bandit steps of the start policy's training"
    )
    p.add_argument("--cost-weight", type=float, default=0.2, help="served cost weight (model router-<w>)")
    p.add_argument("--temperature", type=float, default=0.1, help="bonus-softmax exploration temperature")
    p.add_argument("--bonus", type=float, default=1.0, help="weight of the LinUCB width in the softmax")
    p.add_argument(
        "--margin",
        type=float,
        default=-0.03,
        help="learn's margin: promote when the candidate's DR lower bound > the champion's DR + margin (< 0: a "
        "tolerance; at 0 no candidate of a 3,000-prompt replay was promoted)",
    )
    p.add_argument(
        "--gate",
        choices=["absolute", "difference"],
        default="absolute",
        help="learn's gate: absolute (candidate lower bound > champion + margin) or difference (paired)",
    )
    p.add_argument("--holdout", type=float, default=0.3, help="learn's held-out newest share for the OPE")
    from router_rl.learn import ESTIMATE_SPLIT

    p.add_argument(
        "--estimate-split",
        type=float,
        default=ESTIMATE_SPLIT,
        help="learn's --estimate-split: share of the held-out rows kept out of the decision for the candidate's "
        "selection-free value (0: the decision's rows report it, as before)",
    )
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the OPE intervals")
    p.add_argument("--concurrency", type=int, default=4, help="client connections")
    p.add_argument("--rate", type=float, default=0.0, help="requests per second (0: as fast as served)")
    p.add_argument(
        "--budget-usd-per-hour",
        type=float,
        default=0.0,
        help="serve's spend pacer target (0: off); use --rate",
    )
    p.add_argument("--budget-update-s", type=float, default=1.0, help="serve's --budget-update-s")
    p.add_argument("--budget-window-s", type=float, default=15.0, help="serve's --budget-window-s")
    p.add_argument("--budget-step", type=float, default=1.0, help="serve's --budget-step (per minute)")
    p.add_argument("--no-static", action="store_true", help="skip the static control")
    p.add_argument("--override", nargs="*", default=[], help="more Hydra overrides of the train config")
    p.add_argument("--out", default=str(RESULTS / "production_loop"), help="output prefix (.json/.md/.png)")
    p.add_argument("--workdir", default=None, help="where logs and artifacts go (default: a temp dir)")
    p.add_argument(
        "--rescore",
        default=None,
        help="a result .json: recompute its prediction intervals and summary, rewrite its .json/.md/.png",
    )
    return p.parse_args(argv)


def rescore(path: Path) -> dict[str, Any]:
    """Recompute a result's prediction intervals (from the ope.json figures it holds) and its summary with
    this script's scoring, and rewrite its .json, .md and .png."""
    result = json.loads(path.read_text())
    cfg = result["config"]
    for res in result["seeds"].values():
        for c in res["loop"]["learns"]:
            if "realised" in c:
                c.update(prediction_intervals(c, res["loop"]["windows"][c["realised_window"]]["n"]))
    result["summary"] = summarise(
        result["seeds"], cfg["margin"], cfg.get("budget_usd_per_hour", 0.0), cfg.get("rate", 0.0)
    )
    result["rescored"] = "prediction intervals and summary recomputed by --rescore from the run's own figures"
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot(result, path.with_suffix(".png"))
    write_md(result, path.with_suffix(".md"))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    if opts.rescore:
        return rescore(Path(opts.rescore))
    t_start = time.perf_counter()
    from router_rl import training as T

    cfg = compose_cfg(
        [
            f"data={opts.data}",
            f"embedder={opts.embedder}",
            *(["embedder.distill.fit=null"] if opts.embedder == "static" else []),  # the plain distillation
            f"policy={opts.policy}",
            f"train.steps={opts.train_steps}",
            *opts.override,
        ]
    )
    cfg.reward.cost_weight = opts.cost_weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setup = T.prepare(cfg)
    d = setup.data
    models = list(d.models)
    traffic = Traffic(
        prompts=np.asarray(d.prompts, dtype=object),
        quality=d.quality,
        cost_usd=d.cost_usd,
        tokens_in=d.input_tokens,
        tokens_out=d.output_tokens,
        models=models,
        cost_scale=float(setup.cost_scale),
    )
    counts = {}
    for p in traffic.prompts:
        counts[p] = counts.get(p, 0) + 1
    unique = np.array([counts[p] == 1 for p in traffic.prompts])
    work = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="production-loop-"))
    print(f"[production-loop] {d.n_prompts} prompts, cost scale {setup.cost_scale:.6g}, work in {work}")
    seeds: dict[int, dict[str, Any]] = {}
    with Stub(d.quality, d.input_tokens, d.output_tokens, models) as stub:
        stub.noise = opts.judge_noise
        for seed in opts.seeds:
            stub.seed = seed
            start_rows, rows = seed_rows(d.n_prompts, unique, seed, opts.start_share, opts.n_prompts)
            t0 = time.perf_counter()
            start = train_start(setup, cfg, start_rows, work / f"seed{seed}" / "start", seed)
            print(
                f"[seed {seed}] start policy on {len(start_rows)} prompts in {time.perf_counter() - t0:.0f}s"
            )
            res = {}
            for arm, learning in (("loop", True), ("static", False)):
                if arm == "static" and opts.no_static:
                    continue
                print(f"[seed {seed}] {arm}")
                r = run_arm(
                    traffic=traffic,
                    rows=rows,
                    start=start,
                    workdir=work / f"seed{seed}" / arm,
                    stub=stub,
                    opts=opts,
                    seed=seed,
                    learning=learning,
                )
                res[arm] = {"windows": r.windows, "learns": r.learns}
                # AIQ over the cost-weight sweep of the policy serving at the end, on the last third's prompts
                last = rows[len(rows) - len(rows) // 3 :]
                res[arm]["aiq_last_third"] = aiq_of(
                    r.final_artifact, setup.embeddings[last], d.quality[last], d.cost_usd[last], setup.weights
                )
            seeds[seed] = res
    result = {
        "config": {
            "data": opts.data,
            "embedder": opts.embedder,
            "policy": opts.policy,
            "n_prompts": opts.n_prompts,
            "every": opts.every,
            "judge_noise": opts.judge_noise,
            "judge_share": opts.judge_share,
            "start_share": opts.start_share,
            "train_steps": opts.train_steps,
            "cost_weight": opts.cost_weight,
            "cost_scale": float(setup.cost_scale),
            "temperature": opts.temperature,
            "bonus": opts.bonus,
            "margin": opts.margin,
            "gate": opts.gate,
            "holdout": opts.holdout,
            "estimate_split": opts.estimate_split,
            "level": opts.level,
            "concurrency": opts.concurrency,
            "rate": opts.rate,
            "budget_usd_per_hour": opts.budget_usd_per_hour,
            "budget_update_s": opts.budget_update_s,
            "budget_window_s": opts.budget_window_s,
            "budget_step": opts.budget_step,
            "models": models,
        },
        "command": "python experiments/production_loop.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": (time.perf_counter() - t_start) / 60,
        "seeds": seeds,
        "stub": {"answered": stub.answered, "judged": stub.judged, "unmatched": stub.unmatched},
    }
    if not opts.no_static:
        result["summary"] = summarise(seeds, opts.margin, opts.budget_usd_per_hour, opts.rate)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    if not opts.no_static:
        plot(result, out.with_suffix(".png"))
        write_md(result, out.with_suffix(".md"))
        print(json.dumps(result["summary"], indent=1))
    if not opts.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
