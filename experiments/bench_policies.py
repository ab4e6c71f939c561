"""Benchmark the policy heads, the envs and bandit training against Vowpal Wabbit on this CPU.

Sections (every timing is the median of repeats after a warm-up, in one process with one BLAS thread unless
``--threads`` says otherwise):

- **policies**: microseconds per request of every policy under ``policies/`` (as configured in
  ``configs/policy/``) on random unit-norm 384-dim contexts (like MiniLM embeddings) and K = 10 models, after
  ~10k observations of a synthetic linear problem: the exploring decision the trainer calls
  (``probs(..., explore=True)``), the greedy one (``explore=False``), and ``update`` of a feedback batch, at
  batch 1 and 256. Vowpal Wabbit runs on the same contexts: ``vw core`` is one ``--cb_explore_adf`` workspace
  with our default arguments on pre-formatted text examples (VW's own path: parse and predict / learn);
  ``vw`` is our wrapper policy (text formatting included, one workspace per cost weight on update). Every
  policy gets its ratio to ``vw core``.
- **arena**: the same decisions on the bundled arena embeddings (K = 16), for LinUCB trained by ``learn``.
- **env**: steps per second of ``router_rl/Routing-v0`` and of the training vector env
  (``make_feedback_vector_env``, 64 envs, ``SAME_STEP``), with random actions and with LinUCB deciding and
  learning at every step.
- **training**: wall time of ``router_rl.training.learn`` with LinUCB on the arena embeddings for
  ``--train-steps`` steps (1M is the reference figure; below it the per-step rate is extrapolated, and says so).
- **scaling**: decision cost at batch 256 as the number of models grows (LinUCB, LinTS, VW) and as the
  embedding size grows (LinUCB, LinTS).

Usage:

    python experiments/bench_policies.py --quick                    # < 1 min smoke run
    ROUTER_RL_CACHE=/tmp/rrl-cache python experiments/bench_policies.py            # full, ~5 min on 2 cores
    python experiments/bench_policies.py --sections training --train-steps 1000000 --out experiments/results/train_1m
    python experiments/bench_policies.py --threads 2                # the policies with two BLAS threads

Writes ``experiments/results/bench_policies.json``, ``bench_policies.md`` and ``bench_policies_scaling.png``
(``--quick`` writes ``bench_policies_quick.*``). Timings on a shared machine are noisy: the load average at
the start and the end is recorded with the machine.
"""

from __future__ import annotations

import os
import sys

# One BLAS/OpenMP thread by default: the cost of one decision as the trainer (single-threaded BLAS) pays it;
# ``--threads N`` (read here, before numpy loads its BLAS) gives the policies N threads.
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

POLICIES = [
    "linucb",
    "lin_ts",
    "eps_greedy",
    "sliding_linucb",
    "neural_ts",
    "knn",
    "mlp",
    "zero_router",
    "random",
    "routellm_mf",
    "vw",
]
SUPERVISED = {"knn": 2000, "mlp": 2000, "routellm_mf": 2000}  # full-information rows given to ``fit`` first
VW_ARGS = "--cb_explore_adf --squarecb -q sa --power_t 0 -l 0.05"  # configs/policy/vw.yaml's


# ------------------------------------------------------------------------------------------- helpers
def timed(fn: Callable[[], Any], *, repeats: int, number: int = 1, warmup: int = 1) -> float:
    """Median seconds of one ``fn()`` call over ``repeats`` timings of ``number`` calls, after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Problem:
    """A synthetic routing problem on unit-norm contexts: per model a linear quality, a fixed cost, a latency."""

    def __init__(self, k: int, d: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.k, self.d, self.rng = k, d, rng
        self.u = rng.standard_normal((k, d))
        self.u /= np.linalg.norm(self.u, axis=1, keepdims=True)
        self.base = rng.uniform(0.5, 0.85, k)
        self.cost = np.exp(rng.uniform(np.log(0.02), 0.0, k))
        self.latency = rng.uniform(1.0, 20.0, k)

    def contexts(self, n: int) -> np.ndarray:
        return unit_rows(n, self.d, self.rng)

    def outcomes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, K) quality, cost and latency tables of contexts x."""
        n = len(x)
        quality = self.base + 3.0 * x @ self.u.T + 0.1 * self.rng.standard_normal((n, self.k))
        latency = self.latency * np.exp(0.25 * self.rng.standard_normal((n, self.k)))
        return np.clip(quality, 0.0, 1.0), np.tile(self.cost, (n, 1)), latency

    def feedback(self, x: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        q, c, lat = self.outcomes(x)
        rows = np.arange(len(x))
        return q[rows, actions], c[rows, actions], lat[rows, actions]


def policy_configs(names: list[str]) -> dict[str, Any]:
    """Each policy's config group entry (``configs/policy/<name>.yaml``) with seed 0."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        return {n: compose(config_name="train", overrides=[f"policy={n}", "seed=0"]).policy for n in names}


def build(cfg: Any, models: list[str], dim: int, **overrides: Any) -> Any:
    from hydra.utils import instantiate

    return instantiate(cfg, models=list(models), dim=int(dim), _convert_="all", **overrides)


def train_bandit(
    policy: Any, problem: Problem, n_obs: int, batch: int = 256, cost_weight: float = 0.2
) -> None:
    """``n_obs`` observations of bandit feedback, acting with the policy's own exploring probabilities."""
    from router_rl.policies.base import sample_actions

    for _ in range(max(1, n_obs // batch)):
        x = problem.contexts(batch)
        actions, _ = sample_actions(policy.probs(x, cost_weight=cost_weight, explore=True), problem.rng)
        policy.update(x, actions, *problem.feedback(x, actions))


# ------------------------------------------------------------------------------------------ vw core
class VWCore:
    """One VW ``--cb_explore_adf`` workspace on pre-formatted ADF text examples (the peer's own path)."""

    def __init__(self, k: int, args: str = VW_ARGS, seed: int = 0) -> None:
        from router_rl.policies.vw import action_feature, import_vw

        self.ws = import_vw().Workspace(f"{args} --quiet --random_seed {seed}")
        self.actions = [f"|a {action_feature(f'model-{i}')}" for i in range(k)]
        self.k = k

    def examples(self, x: np.ndarray) -> list[list[str]]:
        from router_rl.policies.vw import shared_lines

        return [[line, *self.actions] for line in shared_lines(x)]

    def labelled(
        self, x: np.ndarray, actions: np.ndarray, cost: np.ndarray, prob: np.ndarray
    ) -> list[list[str]]:
        out = self.examples(x)
        for ex, a, c, p in zip(out, actions, cost, prob, strict=True):
            ex[1 + int(a)] = f"0:{c:.6g}:{p:.6g} {ex[1 + int(a)]}"
        return out

    def predict(self, examples: list[list[str]]) -> list[list[float]]:
        return [self.ws.predict(ex) for ex in examples]

    def learn(self, examples: list[list[str]]) -> None:
        for ex in examples:
            self.ws.learn(ex)

    def train(self, problem: Problem, n_obs: int, batch: int = 256, cost_weight: float = 0.2) -> None:
        for _ in range(max(1, n_obs // batch)):
            x = problem.contexts(batch)
            pmf = np.asarray(self.predict(self.examples(x)))
            pmf /= pmf.sum(axis=1, keepdims=True)
            cdf = np.cumsum(pmf, axis=1)
            a = np.minimum((problem.rng.random((batch, 1)) > cdf).sum(axis=1), self.k - 1)
            q, c, lat = problem.feedback(x, a)
            self.learn(self.labelled(x, a, -(q - cost_weight * c), pmf[np.arange(batch), a]))


# ------------------------------------------------------------------------------------------ sections
def bench_policies(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Decision and update costs of every policy and of VW on the same contexts."""
    k, d = args.models, 384
    names = [n for n in POLICIES if n in args.policies]
    cfgs = policy_configs(names)
    sizes = {1: dict(repeats=args.repeats, number=args.inner), 256: dict(repeats=args.repeats)}
    out: dict[str, Any] = {}
    pool = Problem(k, d, seed=99).contexts(4096)  # decision contexts, the same for every policy

    def measure(decide_explore, decide_greedy, update, prepare=lambda x: x) -> dict[str, float]:
        """Per-request microseconds; ``prepare`` turns contexts into the decision's input (untimed)."""
        res: dict[str, float] = {}
        for b, opts in sizes.items():
            xs = [prepare(pool[i * b : (i + 1) * b]) for i in range(max(1, min(16, len(pool) // b)))]
            cyc = {"i": 0}

            def nxt(xs=xs, cyc=cyc) -> np.ndarray:
                cyc["i"] = (cyc["i"] + 1) % len(xs)
                return xs[cyc["i"]]

            res[f"decide_us_b{b}"] = timed(lambda: decide_explore(nxt()), **opts) / b * 1e6
            if decide_greedy is not None:
                res[f"greedy_us_b{b}"] = timed(lambda: decide_greedy(nxt()), **opts) / b * 1e6
            res[f"update_us_b{b}"] = timed(lambda b=b: update(b), **opts) / b * 1e6
        return res

    # Vowpal Wabbit, the peer
    problem = Problem(k, d, seed=1)
    vw = VWCore(k)
    vw.train(problem, args.observations)
    stream = {b: [problem.contexts(b) for _ in range(4)] for b in sizes}

    def vw_update(b: int) -> None:
        x = stream[b][0]
        a = problem.rng.integers(k, size=b)
        vw.learn(vw.labelled(x, a, problem.rng.random(b), np.full(b, 1.0 / k)))

    # VW's examples are formatted outside the timed call: its cost is parse + predict, as on its command line
    out["vw core"] = measure(vw.predict, None, vw_update, prepare=vw.examples)
    bar.update(1)

    runs = [(name, name, {}) for name in names]
    if "linucb" in names and (os.cpu_count() or 1) >= 2:
        # LinUCB's exploration bonus shared by two threads (its `threads` option; BLAS stays at one thread)
        runs.insert(names.index("linucb") + 1, ("linucb (2 threads)", "linucb", {"threads": 2}))
    for label, name, overrides in runs:
        kk = 2 if name == "routellm_mf" else k
        problem = Problem(kk, d, seed=1)
        models = [f"model-{i}" for i in range(kk)]
        policy = build(cfgs[name], models, d, **overrides)
        n_obs = args.observations
        if name in SUPERVISED:
            n_fit = SUPERVISED[name] if not args.quick else 500
            x = problem.contexts(n_fit)
            policy.fit(x, *problem.outcomes(x))
            n_obs -= n_fit
        if name != "routellm_mf" and n_obs > 0:
            train_bandit(policy, problem, n_obs)
        stream = {b: [problem.contexts(b) for _ in range(4)] for b in sizes}

        def update(b: int, policy=policy, problem=problem, stream=stream) -> None:
            x = stream[b][problem.rng.integers(4)]
            a = problem.rng.integers(len(policy.models), size=b)  # feedback on uniformly chosen models
            policy.update(x, a, *problem.feedback(x, a))

        out[label] = measure(
            lambda x, policy=policy: policy.probs(x, cost_weight=0.2, explore=True),
            lambda x, policy=policy: policy.probs(x, cost_weight=0.2, explore=False),
            update,
        )
        out[label]["models"] = kk
        bar.update(1)
    for res in out.values():
        for key in [k for k in res if k.endswith(("_b1", "_b256"))]:
            peer = out["vw core"].get(key.replace("greedy", "decide"))
            if peer:
                res[f"{key}_vs_vw"] = res[key] / peer
    return out


def load_arena() -> tuple[Any, np.ndarray, Any]:
    from hydra import compose, initialize_config_module

    from router_rl.training import load_data, make_embedder

    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(config_name="train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_data(cfg.data)
    embeddings = make_embedder(cfg.embedder, show_progress=False).encode(list(data.prompts))
    return data, np.asarray(embeddings), cfg


def bench_env(args: argparse.Namespace, data: Any, embeddings: np.ndarray, cfg: Any, bar: tqdm) -> dict:
    """Steps per second of the single env and of the training vector env, random actions and LinUCB."""
    import gymnasium as gym

    import router_rl.envs  # noqa: F401 - registers router_rl/Routing-v0
    from router_rl.envs import step_outcomes
    from router_rl.envs.wrappers import make_feedback_vector_env
    from router_rl.policies.base import sample_actions

    k, d = len(data.models), embeddings.shape[1]
    lin_cfg = policy_configs(["linucb"])["linucb"]
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    env = gym.make("router_rl/Routing-v0", data=data, embeddings=embeddings, cost_weight=0.2)
    for label, steps in (("random", args.env_steps), ("linucb", args.env_steps // 2)):
        policy = build(lin_cfg, list(data.models), d)
        obs, _ = env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(steps):
            if label == "random":
                a = int(rng.integers(k))
            else:
                a = int(sample_actions(policy.probs(obs[None], cost_weight=0.2, explore=True), rng)[0][0])
            obs2, _, _, _, info = env.step(a)
            if label == "linucb":
                policy.update(
                    obs[None], np.array([a]), [info["quality"]], [info["cost"]], [info["latency_s"]]
                )
            obs, _ = env.reset()
        out[f"single_{label}_steps_per_s"] = steps / (time.perf_counter() - t0)
        bar.update(1)
    env.close()
    batch = int(cfg.train.batch_size)
    for label, batches in (("random", args.env_steps // batch), ("linucb", args.env_steps // batch // 2)):
        policy = build(lin_cfg, list(data.models), d)
        envs = make_feedback_vector_env(batch, judge=None, data=data, embeddings=embeddings, cost_weight=0.2)
        obs, _ = envs.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(max(1, batches)):
            if label == "random":
                a = rng.integers(k, size=batch)
            else:
                a, _ = sample_actions(policy.probs(obs, cost_weight=0.2, explore=True), rng)
            nxt, _, _, _, infos = envs.step(a)
            if label == "linucb":
                o = step_outcomes(infos)
                policy.update(obs, a, o["quality"], o["cost"], o["latency_s"])
            obs = nxt
        out[f"vector{batch}_{label}_steps_per_s"] = max(1, batches) * batch / (time.perf_counter() - t0)
        envs.close()
        bar.update(1)
    return out


def bench_training(args: argparse.Namespace, data: Any, embeddings: np.ndarray, cfg: Any, bar: tqdm) -> dict:
    """Wall time of ``learn`` with LinUCB on the arena embeddings, and the trained policy's decision cost."""
    from router_rl.reward import default_cost_scale
    from router_rl.training import learn

    rows = np.flatnonzero(data.complete_rows())
    policy = build(policy_configs(["linucb"])["linucb"], list(data.models), embeddings.shape[1])
    t0 = time.perf_counter()
    stats = learn(
        policy,
        data,
        embeddings,
        rows,
        steps=args.train_steps,
        batch_size=int(cfg.train.batch_size),
        cost_weight=float(cfg.reward.cost_weight),
        cost_scale=default_cost_scale(data.cost_usd[rows]),
        latency_weight=float(cfg.reward.latency_weight),
        seed=0,
        env_options={"latency_sigma": float(cfg.env.latency_sigma)},
    )
    seconds = time.perf_counter() - t0
    bar.update(1)
    x = embeddings[np.random.default_rng(0).integers(len(embeddings), size=256)]
    decide = timed(lambda: policy.probs(x, cost_weight=0.2, explore=True), repeats=args.repeats) / 256 * 1e6
    greedy = timed(lambda: policy.probs(x, cost_weight=0.2), repeats=args.repeats) / 256 * 1e6
    return {
        "policy": "linucb",
        "steps": int(stats["steps"]),
        "batch_size": int(cfg.train.batch_size),
        "seconds": seconds,
        "steps_per_s": stats["steps"] / seconds,
        "seconds_per_1m_steps": seconds / stats["steps"] * 1e6,
        "measured_1m": stats["steps"] >= 1_000_000,
        "arena_decide_us_b256": decide,
        "arena_greedy_us_b256": greedy,
        "arena_models": len(data.models),
    }


def bench_scaling(args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    """Decision cost (explore, batch 256) against the number of models and the embedding size."""
    cfgs = policy_configs(["linucb", "lin_ts"])
    out: dict[str, Any] = {"models": {}, "dim": {}}
    n_obs = 1000 if args.quick else 10_000

    def one(name: str, k: int, d: int) -> float:
        problem = Problem(k, d, seed=2)
        policy = build(cfgs[name], [f"model-{i}" for i in range(k)], d)
        for _ in range(max(1, n_obs // 1000)):  # random actions: the state of ~n_obs observations, quickly
            x = problem.contexts(1000)
            a = problem.rng.integers(k, size=1000)
            policy.update(x, a, *problem.feedback(x, a))
        x = problem.contexts(256)
        return timed(lambda: policy.probs(x, cost_weight=0.2, explore=True), repeats=args.repeats) / 256 * 1e6

    for k in args.scale_models:
        row = {name: one(name, k, 384) for name in ("linucb", "lin_ts")}
        problem = Problem(k, 384, seed=2)
        vw = VWCore(k)
        vw.train(problem, 500 if args.quick else 2000)
        ex = vw.examples(problem.contexts(256))
        row["vw core"] = timed(lambda vw=vw, ex=ex: vw.predict(ex), repeats=args.repeats) / 256 * 1e6
        out["models"][k] = row
        bar.update(1)
    for d in args.scale_dims:
        out["dim"][d] = {name: one(name, args.models, d) for name in ("linucb", "lin_ts")}
        bar.update(1)
    return out


# ------------------------------------------------------------------------------------------ reports
def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "scipy", "torch", "vowpalwabbit", "gymnasium"):
        try:
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average_start": os.getloadavg(),
    }


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Policy, env and training benchmark",
        "",
        f"`python experiments/bench_policies.py{' --quick' if res['quick'] else ''}` on {m['cpu']} "
        f"({m['cores']} cores, {m['blas_threads']} BLAS thread(s)), {m['date']}; numpy {m['versions']['numpy']}, "
        f"torch {m['versions']['torch']}, vowpalwabbit {m['versions']['vowpalwabbit']}. Load average "
        f"{m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at the end "
        "(other jobs on the machine make every figure noisy).",
        "",
    ]
    if "policies" in res:
        p = res["policies"]
        lines += [
            f"## Policies: microseconds per request ({res['config']['models']} models, 384-dim unit-norm "
            f"contexts, after ~{res['config']['observations']} observations)",
            "",
            "Decide = `probs(explore=True)` (what the trainer calls), greedy = `probs(explore=False)`, update = "
            "`update` of a feedback batch; ratio = policy / `vw core` at the same batch size (< 1 is faster).",
            "",
            "| policy | decide b1 | decide b256 | greedy b1 | greedy b256 | update b1 | update b256 |"
            " decide b256 / VW | update b256 / VW |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def f(v: float | None) -> str:
            return "–" if v is None else (f"{v:.3g}" if v < 100 else f"{v:,.0f}")

        for name, r in p.items():
            label = name + (
                f" (K={r['models']})"
                if r.get("models", res["config"]["models"]) != res["config"]["models"]
                else ""
            )
            lines.append(
                f"| {label} | {f(r.get('decide_us_b1'))} | {f(r.get('decide_us_b256'))} | "
                f"{f(r.get('greedy_us_b1'))} | {f(r.get('greedy_us_b256'))} | {f(r.get('update_us_b1'))} | "
                f"{f(r.get('update_us_b256'))} | {f(r.get('decide_us_b256_vs_vw'))} | "
                f"{f(r.get('update_us_b256_vs_vw'))} |"
            )
        lines.append("")
    if "env" in res:
        e = res["env"]
        lines += [
            "## Env: steps per second (arena data)",
            "",
            "| env | random actions | LinUCB decides and learns |",
            "|---|---|---|",
        ]
        lines.append(
            f"| `router_rl/Routing-v0` | {e['single_random_steps_per_s']:,.0f} | {e['single_linucb_steps_per_s']:,.0f} |"
        )
        vec = [key for key in e if key.startswith("vector") and key.endswith("random_steps_per_s")][0]
        n = vec[len("vector") : vec.index("_")]
        lines.append(
            f"| vector env, {n} envs (`make_feedback_vector_env`) | {e[vec]:,.0f} | "
            f"{e[vec.replace('random', 'linucb')]:,.0f} |"
        )
        lines.append("")
    if "training" in res:
        t = res["training"]
        note = "measured" if t["measured_1m"] else f"extrapolated from {t['steps']:,} steps"
        lines += [
            "## Training (LinUCB, `router_rl.training.learn`, arena embeddings)",
            "",
            f"{t['steps']:,} steps (batch {t['batch_size']}) in {t['seconds']:.1f} s = {t['steps_per_s']:,.0f} steps/s; "
            f"1M steps: {t['seconds_per_1m_steps'] / 60:.1f} min ({note}). The trained policy decides a batch of "
            f"256 arena prompts ({t['arena_models']} models) in {t['arena_decide_us_b256']:.1f} µs per request "
            f"exploring, {t['arena_greedy_us_b256']:.2f} µs greedy.",
            "",
        ]
    if "scaling" in res:
        s = res["scaling"]
        lines += [
            "## Scaling: decide at batch 256, µs per request",
            "",
            "| models | LinUCB | LinTS | VW core |",
            "|---|---|---|---|",
        ]
        for k, r in s["models"].items():
            lines.append(f"| {k} | {r['linucb']:.3g} | {r['lin_ts']:.3g} | {r['vw core']:.3g} |")
        lines += [
            "",
            f"| embedding dim ({res['config']['models']} models) | LinUCB | LinTS |",
            "|---|---|---|",
        ]
        for d, r in s["dim"].items():
            lines.append(f"| {d} | {r['linucb']:.3g} | {r['lin_ts']:.3g} |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["scaling"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ks = [int(k) for k in s["models"]]
    for name in ("linucb", "lin_ts", "vw core"):
        ax1.plot(ks, [s["models"][k][name] for k in s["models"]], marker="o", label=name)
    ax1.set(xscale="log", yscale="log", xlabel="models K (384-dim)", ylabel="µs per request (batch 256)")
    ax1.set_xticks(ks, [str(k) for k in ks])
    ds = [int(d) for d in s["dim"]]
    for name in ("linucb", "lin_ts"):
        ax2.plot(ds, [s["dim"][d][name] for d in s["dim"]], marker="o", label=name)
    ax2.set(xscale="log", yscale="log", xlabel=f"embedding dim ({res['config']['models']} models)")
    ax2.set_xticks(ds, [str(d) for d in ds])
    for ax in (ax1, ax2):
        ax.minorticks_off()
        ax.axhline(20, color="grey", ls=":", lw=1, label="20 µs target")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Exploring decision cost, {res['machine']['blas_threads']} BLAS thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--policies", nargs="*", default=POLICIES, help="policies to time (default: all)")
    parser.add_argument("--sections", nargs="*", default=["policies", "env", "training", "scaling"])
    parser.add_argument(
        "--train-steps", type=int, default=None, help="learn() steps (default 100k, quick 5k)"
    )
    parser.add_argument("--out", default="experiments/results", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch threads (default 1)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.models = 10
    args.observations = 1000 if args.quick else 10_000
    args.repeats = 3 if args.quick else 7
    args.inner = 20 if args.quick else 100
    args.env_steps = 1000 if args.quick else 6400
    args.train_steps = args.train_steps or (3000 if args.quick else 100_000)
    args.scale_models = [2, 16] if args.quick else [2, 4, 8, 16, 32, 64]
    args.scale_dims = [64, 384] if args.quick else [64, 128, 256, 384, 768, 1024]
    if args.quick:
        args.policies = [p for p in args.policies if p not in ("neural_ts", "mlp")]

    res: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    res["config"] = {
        "models": args.models,
        "observations": args.observations,
        "train_steps": args.train_steps,
    }
    total = 0
    two_threads = "linucb" in args.policies and (os.cpu_count() or 1) >= 2  # the extra "linucb (2 threads)"
    total += (len(args.policies) + 1 + two_threads) * ("policies" in args.sections)
    total += 4 * ("env" in args.sections) + ("training" in args.sections)
    total += (len(args.scale_models) + len(args.scale_dims)) * ("scaling" in args.sections)
    with tqdm(total=total, desc="bench", unit="part", dynamic_ncols=True) as bar:
        if "policies" in args.sections:
            res["policies"] = bench_policies(args, bar)
        if {"env", "training"} & set(args.sections):
            data, embeddings, cfg = load_arena()
            if "env" in args.sections:
                res["env"] = bench_env(args, data, embeddings, cfg, bar)
            if "training" in args.sections:
                res["training"] = bench_training(args, data, embeddings, cfg, bar)
        if "scaling" in args.sections:
            res["scaling"] = bench_scaling(args, bar)
    res["machine"]["load_average_end"] = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_policies_quick" if args.quick else "bench_policies"
    stem += f"_threads{args.threads}" if args.threads != 1 else ""
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    text = markdown(res)
    (out / f"{stem}.md").write_text(text + "\n")
    if "scaling" in res:
        plot(res, out / f"{stem}_scaling.png")
    print(text)
    return res


if __name__ == "__main__":
    main()
