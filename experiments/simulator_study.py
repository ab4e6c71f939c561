"""Simulator study on the bundled arena data: the latency model, drift adaptation, budget pacing versus PPO.

Three parts, each writing ``experiments/results/simulator_<part>.json``; ``report`` (and every part) rebuilds
``experiments/results/simulator.md`` from the JSON files that exist:

- ``latency``: what the serving simulator makes of the catalog's ASSUMED latency priors (per-model latency at
  base load, tail, tier-budget violations) and how queueing latency and 429s grow with one model's traffic.
- ``drift``: each scenario (price cut, silent quality drop, outage, new model) over a stream of decisions at
  cost weight 0.2; per policy the quality and regret before and after, and the steps to adapt; adaptation
  curves in ``simulator_drift_curves.png``.
- ``budget``: budgeted episodes (``router_rl/BudgetedRouting-v0``) on held-out prompts: spend over budget and
  quality for LinUCB without a budget, LinUCB at a cost weight calibrated offline, the primal-dual pacer over
  LinUCB, and Stable-Baselines3 PPO trained on the other prompts.

Usage:

    python experiments/simulator_study.py all                  # about 25 min on a busy 2-core CPU
    python experiments/simulator_study.py drift --seeds 3
    python experiments/simulator_study.py budget --ppo-steps 100000
    python experiments/simulator_study.py report

Embeddings come from the default offline encoder through the on-disk cache (``--cache-dir``, default
``$ROUTER_RL_CACHE`` or ``~/.cache/router-rl``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 shared cores: no BLAS oversubscription
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COST_WEIGHT = 0.2  # the training default (configs/reward/default.yaml)
DRIFT_AT = 5000
OUTAGE_END = 8000
SCENARIOS = {
    "price_cut": [{"kind": "price_cut", "model": "gpt-4-0314", "at": DRIFT_AT, "factor": 0.25}],
    "quality_drop": [{"kind": "quality_drop", "model": "gpt-4-1106-preview", "at": DRIFT_AT, "factor": 0.6}],
    "outage": [{"kind": "outage", "model": "gpt-4-1106-preview", "at": DRIFT_AT, "until": OUTAGE_END}],
    "new_model": [{"kind": "new_model", "model": "gpt-4-1106-preview", "at": DRIFT_AT}],
}
ADAPT_WINDOW, ADAPT_MARGIN = 500, 0.02
BUDGET_SETTINGS = {
    "no account limits": {"simulator": {"tail_prob": 0.05, "fallback": "cheapest", "arrival_rate": 0.5}},
    "account limits (env default)": {},  # BUDGETED_SIMULATOR: 4 concurrent per model, queue 8, timeout 120 s
}


# ----------------------------------------------------------------------------------------------- data
def load_arena(cache_dir: str | None):
    from router_rl.data import load_bundled
    from router_rl.embeddings import Embedder
    from router_rl.reward import default_cost_scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_bundled("arena")
    data = data.take(data.complete_rows())
    embeddings = Embedder(cache_dir=cache_dir, show_progress=False).encode(list(data.prompts))
    return data, np.asarray(embeddings, dtype=np.float32), default_cost_scale(data.cost_usd)


def make_drift_policy(name: str, models: list[str], dim: int):
    from router_rl.policies.linucb import LinUCB
    from router_rl.policies.sliding_linucb import SlidingWindowLinUCB
    from router_rl.policies.zero_router import ZeroRouter

    if name == "linucb":
        return LinUCB(models, dim, alpha=1.0, ridge=30.0, bias_ridge=0.01)  # configs/policy/linucb.yaml
    if name == "sliding_linucb":
        return SlidingWindowLinUCB(models, dim)  # configs/policy/sliding_linucb.yaml
    if name == "sliding_linucb_no_forcing":
        return SlidingWindowLinUCB(models, dim, min_pulls=0)
    if name == "zero_router":
        return ZeroRouter(models, dim, epsilon=0.1)
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------- latency
def latency_part(args) -> dict:
    from router_rl.envs import SIMULATED_SIMULATOR
    from router_rl.envs.scenarios import Scenario
    from router_rl.envs.simulator import RequestSimulator, parse_simulator
    from router_rl.envs.tiers import DEFAULT_TIERS
    from router_rl.envs.traffic import Traffic

    data, _, _ = load_arena(args.cache_dir)
    traffic = Traffic(data, simulator=SIMULATED_SIMULATOR, tiers="default", scenario=None, latency_sigma=0.25)
    sim = traffic.sim
    rng = np.random.default_rng(0)
    _, _, expected = sim.expected()
    per_model = []
    for k, model in enumerate(data.models):
        draws = []
        for _ in range(2000):  # one isolated request at a time: no own queueing, provider load at its cycle
            row, region = int(rng.integers(data.n_prompts)), int(rng.choice(3, p=traffic.config.caller_mix))
            sim.reset()
            draws.append(
                sim.serve(rng, row, k, region=region, now=float(rng.uniform(0, 86400)), step=0).latency_s
            )
        draws = np.array(draws)
        per_model.append(
            {
                "model": model,
                "ttft_s": float(sim.ttft[k]),
                "tokens_per_s": float(sim.tps[k]),
                "prior_source": sim.prior_source[k],
                "mean_output_tokens": float(np.mean(data.output_tokens[:, k])),
                "expected_latency_s": float(expected[:, k].mean()),
                "p50_s": float(np.quantile(draws, 0.5)),
                "p95_s": float(np.quantile(draws, 0.95)),
                "p99_s": float(np.quantile(draws, 0.99)),
                "over_interactive": float(np.mean(draws > DEFAULT_TIERS["interactive"]["budget_s"])),
                "over_standard": float(np.mean(draws > DEFAULT_TIERS["standard"]["budget_s"])),
            }
        )
    # Queueing: only gpt-4-1106-preview traffic, Poisson arrivals, the SimulatedRouting-v0 account limits.
    k = data.models.index("gpt-4-1106-preview")
    queue = []
    for rate in (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.6):
        qsim = RequestSimulator(
            data, parse_simulator(SIMULATED_SIMULATOR, data), Scenario(None, data.models), 0.25
        )
        now, waits, lat, first = 0.0, [], [], []
        for _ in range(4000):
            now += rng.exponential(1 / rate)
            out = qsim.serve(rng, int(rng.integers(data.n_prompts)), k, region=0, now=now, step=0)
            waits.append(out.wait_s), lat.append(out.latency_s), first.append(out.first_status)
        queue.append(
            {
                "arrival_rate": rate,
                "offered_load": rate * float(expected[:, k].mean()) / SIMULATED_SIMULATOR["concurrency"],
                "mean_wait_s": float(np.mean(waits)),
                "p95_latency_s": float(np.quantile(lat, 0.95)),
                "rejected_429": float(np.mean(np.array(first) == "rejected")),
                "timeouts": float(np.mean(np.array(first) == "timeout")),
            }
        )
    return {
        "per_model": per_model,
        "queueing": queue,
        "simulator": SIMULATED_SIMULATOR,
        "tiers": DEFAULT_TIERS,
    }


# ------------------------------------------------------------------------------------------------ drift
def run_stream(policy, data, embeddings, cost_scale, events, *, steps, batch, seed) -> dict[str, np.ndarray]:
    """Online learning in a SAME_STEP vector env under ``events``; per-decision arrays ordered by request."""
    from router_rl.envs import make_vector_env, step_outcomes
    from router_rl.policies.base import sample_actions

    envs = make_vector_env(
        batch,
        data=data,
        embeddings=embeddings,
        cost_weight=COST_WEIGHT,
        cost_scale=cost_scale,
        scenario=events,
    )
    truth = envs.envs[0].unwrapped
    scenario = truth.traffic.scenario
    points = scenario.change_points()
    regimes = [truth.expected_rewards(s) for s in [0, *points]]
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("step", "regret", "quality", "cost_usd", "reward")}
    released = None
    for i in range(steps // batch):
        if hasattr(policy, "set_available"):  # an operator announces releases (not outages) to the policy
            now = scenario.released(i * batch)
            if released is None or (now != released).any():
                policy.set_available(now)
                released = now
        actions, _ = sample_actions(policy.probs(obs, cost_weight=COST_WEIGHT, explore=True), rng)
        next_obs, rewards, _, _, infos = envs.step(actions)
        out = step_outcomes(infos)
        policy.update(obs, actions, out["quality"], out["cost"], out["latency_s"])
        obs = next_obs
        step = infos["final_info"]["step"].astype(int)
        regime = np.searchsorted(points, step, side="right")
        rows = out["prompt_index"].astype(int)
        best = np.array([regimes[r][p].max() for r, p in zip(regime, rows, strict=True)])
        chosen = np.array([regimes[r][p, a] for r, p, a in zip(regime, rows, actions, strict=True)])
        cols["step"].append(step)
        cols["regret"].append(best - chosen)
        cols["quality"].append(out["quality"])
        cols["cost_usd"].append(out["cost_usd"])
        cols["reward"].append(rewards)
    envs.close()
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(arrays["step"])
    return {k: v[order] for k, v in arrays.items()}


def steps_to_adapt(regret: np.ndarray, change: int, end: int) -> int | None:
    """Decisions after ``change`` until the mean regret over the next ``ADAPT_WINDOW`` decisions is back within
    ``ADAPT_MARGIN`` of its level over the 1,000 decisions before the change (None: not before ``end``)."""
    ref = regret[max(0, change - 1000) : change].mean()
    for t in range(change, end - ADAPT_WINDOW + 1, 50):
        if regret[t : t + ADAPT_WINDOW].mean() <= ref + ADAPT_MARGIN:
            return t - change
    return None


def drift_part(args) -> dict:
    data, embeddings, cost_scale = load_arena(args.cache_dir)
    policies = ["linucb", "sliding_linucb", "zero_router"]
    out: dict = {"steps": args.steps, "batch": args.batch, "seeds": args.seeds, "cost_weight": COST_WEIGHT}
    out["scenarios"] = {}
    for name, events in SCENARIOS.items():
        names = policies + (["sliding_linucb_no_forcing"] if name == "new_model" else [])
        changes = [DRIFT_AT] + ([OUTAGE_END] if name == "outage" else [])
        result = {"events": events, "policies": {}}
        for pname in names:
            runs = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                policy = make_drift_policy(pname, list(data.models), embeddings.shape[1])
                runs.append(
                    run_stream(
                        policy,
                        data,
                        embeddings,
                        cost_scale,
                        events,
                        steps=args.steps,
                        batch=args.batch,
                        seed=seed,
                    )
                )
                print(f"[drift] {name} {pname} seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
            regret = np.mean([r["regret"] for r in runs], axis=0)
            entry = {"curve_step": [], "curve_regret": []}
            for t in range(0, args.steps - ADAPT_WINDOW + 1, 100):
                entry["curve_step"].append(t + ADAPT_WINDOW // 2)
                entry["curve_regret"].append(float(regret[t : t + ADAPT_WINDOW].mean()))

            def window(key, lo, hi, runs=runs):
                return float(np.mean([r[key][lo:hi].mean() for r in runs]))

            entry["before"] = {
                k: window(k, DRIFT_AT - 2000, DRIFT_AT) for k in ("quality", "cost_usd", "regret")
            }
            entry["after"] = {
                k: window(k, DRIFT_AT, DRIFT_AT + 2000) for k in ("quality", "cost_usd", "regret")
            }
            entry["end"] = {
                k: window(k, args.steps - 2000, args.steps) for k in ("quality", "cost_usd", "regret")
            }
            entry["steps_to_adapt"] = {
                str(c): [steps_to_adapt(r["regret"], c, args.steps) for r in runs] for c in changes
            }
            result["policies"][pname] = entry
        out["scenarios"][name] = result
    plot_curves(out)
    return out


def plot_curves(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(out["scenarios"]), figsize=(4.2 * len(out["scenarios"]), 3.4), sharey=True
    )
    for ax, (name, result) in zip(np.atleast_1d(axes), out["scenarios"].items(), strict=True):
        for pname, entry in result["policies"].items():
            ax.plot(entry["curve_step"], entry["curve_regret"], label=pname, lw=1.2)
        for e in result["events"]:
            ax.axvline(e["at"], color="k", ls=":", lw=0.8)
            if e.get("until"):
                ax.axvline(e["until"], color="k", ls=":", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("decision")
    np.atleast_1d(axes)[0].set_ylabel(f"pseudo-regret, moving mean over {ADAPT_WINDOW}")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "simulator_drift_curves.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- budget
class FixedWeight:
    """A policy deciding at a fixed extra cost weight (the offline-calibrated baseline)."""

    def __init__(self, policy, weight: float) -> None:
        self.policy, self.weight, self.models, self.name = (
            policy,
            float(weight),
            policy.models,
            "fixed_weight",
        )

    def probs(self, x, *, cost_weight, latency_weight=0.0, explore=False):
        return self.policy.probs(
            x, cost_weight=cost_weight + self.weight, latency_weight=latency_weight, explore=explore
        )

    def update(self, *args) -> None:
        self.policy.update(*args)


def pretrain_linucb(data, embeddings, cost_scale, rows, steps: int, seed: int):
    from router_rl.envs import make_vector_env, step_outcomes
    from router_rl.policies.base import sample_actions
    from router_rl.policies.linucb import LinUCB

    policy = LinUCB(list(data.models), embeddings.shape[1], alpha=1.0, ridge=30.0, bias_ridge=0.01)
    envs = make_vector_env(
        32, data=data, embeddings=embeddings, rows=rows, cost_weight=COST_WEIGHT, cost_scale=cost_scale
    )
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps // 32):
        actions, _ = sample_actions(policy.probs(obs, cost_weight=COST_WEIGHT, explore=True), rng)
        next_obs, _, _, _, infos = envs.step(actions)
        out = step_outcomes(infos)
        policy.update(obs, actions, out["quality"], out["cost"], out["latency_s"])
        obs = next_obs
    return policy


def calibrate_weight(policy, data, embeddings, rows, target_cost_usd: float) -> float:
    """The smallest cost weight whose greedy choices cost at most the target on the training prompts."""
    for w in np.concatenate([np.linspace(0, 2, 41), np.linspace(2.5, 20, 36)]):
        choice = policy.probs(embeddings[rows], cost_weight=w).argmax(axis=1)
        if data.cost_usd[rows, choice].mean() <= target_cost_usd:
            return float(w)
    return 20.0


def budget_part(args) -> dict:
    import copy

    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    import router_rl.envs  # noqa: F401 - registers the ids
    from router_rl.data import kfold_assignments
    from router_rl.policies.pacing import BudgetPacer, run_episode

    torch.set_num_threads(1)
    data, embeddings, cost_scale = load_arena(args.cache_dir)
    folds = kfold_assignments(data.prompt_ids, k=3, seed=0)
    train_rows, test_rows = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    shares, n = [0.1, 0.25], args.requests
    common = {"data": data, "embeddings": embeddings, "cost_scale": cost_scale, "n_requests": n}
    out: dict = {
        "n_requests": n,
        "episodes": args.episodes,
        "train_prompts": len(train_rows),
        "test_prompts": len(test_rows),
    }

    t0 = time.perf_counter()
    base = pretrain_linucb(data, embeddings, cost_scale, train_rows, args.pretrain_steps, seed=0)
    out["pretrain_steps"] = args.pretrain_steps
    print(f"[budget] LinUCB pre-trained in {time.perf_counter() - t0:.0f}s", flush=True)

    out["settings"] = {}
    for setting, extra in BUDGET_SETTINGS.items():
        if args.settings and setting not in args.settings:
            continue
        t0 = time.perf_counter()
        kw = {**common, **extra}
        make = [
            lambda s=s, kw=kw: gym.make("router_rl/BudgetedRouting-v0", rows=train_rows, budget_share=s, **kw)
            for s in shares
        ]
        vec = DummyVecEnv([make[i % len(shares)] for i in range(4)])
        ppo = PPO(
            "MultiInputPolicy",
            vec,
            n_steps=512,
            batch_size=256,
            n_epochs=5,
            gamma=0.999,
            ent_coef=0.01,
            policy_kwargs={"net_arch": [128, 128]},
            seed=0,
            device="cpu",
            verbose=0,
        )
        ppo.learn(total_timesteps=args.ppo_steps)
        result = {"ppo": {"steps": args.ppo_steps, "train_seconds": time.perf_counter() - t0}, "results": {}}
        print(
            f"[budget] {setting}: PPO trained {args.ppo_steps} steps in {result['ppo']['train_seconds']:.0f}s",
            flush=True,
        )
        for mode in ("hard", "soft"):
            for share in shares:
                key = f"{mode}-{share}"
                result["results"][key] = {}
                w = calibrate_weight(base, data, embeddings, train_rows, share * cost_scale)
                pacer = BudgetPacer(list(data.models), embeddings.shape[1])
                pacer.base = copy.deepcopy(base)
                contenders = {
                    "linucb (no budget)": copy.deepcopy(base),
                    f"linucb, cost weight {w:g} calibrated offline": FixedWeight(copy.deepcopy(base), w),
                    "pacing over linucb": pacer,
                    "ppo": ppo,
                }
                for name, policy in contenders.items():
                    env = gym.make(
                        "router_rl/BudgetedRouting-v0",
                        rows=test_rows,
                        budget_share=share,
                        budget_mode=mode,
                        **kw,
                    ).unwrapped
                    rng = np.random.default_rng(1)
                    episodes = [
                        ppo_episode(ppo, env, seed=1000 + e)
                        if name == "ppo"
                        else run_episode(env, policy, rng, seed=1000 + e)
                        for e in range(args.episodes)
                    ]
                    ratios = np.array([ep["spend_ratio"] for ep in episodes])
                    result["results"][key][name] = {
                        "spend_over_budget_mean": float(ratios.mean()),
                        "spend_over_budget_max": float(ratios.max()),
                        "quality": float(np.mean([ep["quality"] for ep in episodes])),
                        "dropped": float(np.mean([ep["dropped"] for ep in episodes])),
                        "fallback": float(np.mean([ep["fallback"] for ep in episodes])),
                    }
                    print(f"[budget] {setting} {key} {name}: {result['results'][key][name]}", flush=True)
        out["settings"][setting] = result
    return out


def ppo_episode(model, env, seed: int) -> dict[str, float]:
    obs, info = env.reset(seed=seed)
    quality, n, dropped, fallback = 0.0, 0, 0, 0
    while True:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, _, info = env.step(np.int64(action))
        quality += info["quality"]
        dropped += info["status"] == "dropped"
        fallback += info["status"] in ("fallback", "failed")
        n += 1
        if terminated:
            return {
                "spend_ratio": info["spent_usd"] / info["budget_usd"],
                "quality": quality / n,
                "dropped": dropped / n,
                "fallback": fallback / n,
            }


# ----------------------------------------------------------------------------------------------- report
def write_report() -> Path:
    parts = {
        p: json.loads((RESULTS / f"simulator_{p}.json").read_text())
        for p in ("latency", "drift", "budget")
        if (RESULTS / f"simulator_{p}.json").is_file()
    }
    for extra in sorted(RESULTS.glob("simulator_budget_*.json")):
        parts[f"budget ({extra.stem.removeprefix('simulator_budget_')})"] = json.loads(extra.read_text())
    path = RESULTS / "simulator.md"
    path.write_text(render(parts))
    return path


def _fmt_adapt(values: list[int | None], horizon: int) -> str:
    done = [v for v in values if v is not None]
    text = (
        f"{int(np.median(done))}"
        if len(done) == len(values)
        else f"{int(np.median(done))}*"
        if done
        else f"> {horizon}"
    )
    return text + f" ({', '.join('>' + str(horizon) if v is None else str(v) for v in values)})"


def render(parts: dict) -> str:
    lines = [
        "# Simulator study (bundled arena data)",
        "",
        "Produced by `experiments/simulator_study.py` (commands below, per part). Data: the bundled arena set, the 270",
        "prompts every model answered (`data.complete_rows()`), 16 models; embeddings from the default offline encoder",
        "(all-MiniLM-L6-v2, cached). Quality and cost are the recorded judge grades and token counts times list prices;",
        "**every latency number here is simulated from ASSUMED priors** (the catalog's `ttft_s` and",
        "`output_tokens_per_s`, and the simulator's assumed round trips, load, concurrency and tail parameters), not",
        "measured: the arena data records no latency.",
        "",
    ]
    if "latency" in parts:
        lat = parts["latency"]
        lines += [
            "## Latency model (`router_rl/SimulatedRouting-v0` defaults)",
            "",
            f"Command: `{lat['command']}` ({lat['wall_seconds']:.0f} s). Options: `{json.dumps(lat['simulator'])}`;",
            "tiers: interactive 10 s, standard 30 s, batch 300 s (ASSUMED budgets). One isolated request at a time at a",
            "uniformly random time of day (provider load 0.3 +- 0.2), callers 60/25/15% in us-east/eu-west/ap-southeast.",
            "",
            "| model | ttft_s (assumed) | tok/s (assumed) | mean output tokens (data) | expected s | p50 s | p95 s | p99 s | > 10 s | > 30 s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in lat["per_model"]:
            lines.append(
                f"| {m['model']} | {m['ttft_s']:.2f} | {m['tokens_per_s']:.0f} | {m['mean_output_tokens']:.0f} | "
                f"{m['expected_latency_s']:.1f} | {m['p50_s']:.1f} | {m['p95_s']:.1f} | {m['p99_s']:.1f} | "
                f"{m['over_interactive']:.0%} | {m['over_standard']:.0%} |"
            )
        lines += [
            "",
            "Queueing: all traffic to gpt-4-1106-preview (account limit: 8 concurrent, queue 16, timeout 120 s), Poisson",
            "arrivals. Offered load = arrival rate x expected latency / concurrency.",
            "",
            "| arrivals / s | offered load | mean wait s | p95 latency s | 429 share | timeout share |",
            "|---|---|---|---|---|---|",
        ]
        for q in lat["queueing"]:
            lines.append(
                f"| {q['arrival_rate']:.2f} | {q['offered_load']:.2f} | {q['mean_wait_s']:.1f} | {q['p95_latency_s']:.1f} | "
                f"{q['rejected_429']:.1%} | {q['timeouts']:.1%} |"
            )
        lines.append("")
    if "drift" in parts:
        d = parts["drift"]
        lines += [
            "## Drift scenarios: quality and steps to adapt",
            "",
            f"Command: `{d['command']}` ({d['wall_seconds']:.0f} s). Each policy learns online from bandit feedback only,",
            f"from scratch, over {d['steps']} decisions (SAME_STEP vector env of {d['batch']}, one update per batch) at",
            f"cost weight {d['cost_weight']}, {d['seeds']} seeds. Regret is pseudo-regret against the best expected",
            "reward per prompt *in the regime in force* (so an unexploited price cut or release counts as regret).",
            f"Steps to adapt: decisions after the change until the mean regret over the next {ADAPT_WINDOW} decisions",
            f"is back within {ADAPT_MARGIN} of the policy's own level over the 1,000 decisions before it; median over",
            "seeds (per-seed values in brackets; * = some seeds never did; > N = none did within the stream).",
            "`sliding_linucb` is told when a model is released (`set_available`, an operator's action) but not about",
            "outages; LinUCB and the zero router are told nothing (a request to an unreleased model fails).",
            "Quality/cost columns: mean per decision over the 2,000 decisions before the change, the 2,000 after it, and",
            "the last 2,000 of the stream.",
            "",
            "| scenario | policy | quality before / after / end | cost $ before / after / end (x1e-3) | regret before / after / end | steps to adapt |",
            "|---|---|---|---|---|---|",
        ]
        for name, result in d["scenarios"].items():
            for pname, e in result["policies"].items():
                adapt = "; ".join(
                    f"{'end ' if int(c) == OUTAGE_END else ''}{_fmt_adapt(v, d['steps'] - int(c))}"
                    for c, v in e["steps_to_adapt"].items()
                )
                lines.append(
                    f"| {name} | {pname} | {e['before']['quality']:.3f} / {e['after']['quality']:.3f} / {e['end']['quality']:.3f} | "
                    f"{1e3 * e['before']['cost_usd']:.2f} / {1e3 * e['after']['cost_usd']:.2f} / {1e3 * e['end']['cost_usd']:.2f} | "
                    f"{e['before']['regret']:.3f} / {e['after']['regret']:.3f} / {e['end']['regret']:.3f} | {adapt} |"
                )
        lines += ["", "Adaptation curves: `simulator_drift_curves.png`.", ""]
        lines += [
            "Events: " + "; ".join(f"{n}: `{json.dumps(r['events'])}`" for n, r in d["scenarios"].items()),
            "",
        ]
    for part in [p for p in parts if p.startswith("budget")]:
        b = parts[part]
        lines += [
            "## Budgeted episodes: pacing bandit versus PPO"
            + (f", run `{part[8:-1]}`" if part != "budget" else ""),
            "",
            f"Command: `{b['command']}` ({b['wall_seconds']:.0f} s). `router_rl/BudgetedRouting-v0`,",
            f"{b['n_requests']} requests per episode arriving at 0.5 per second, drawn from held-out prompts",
            f"({b['test_prompts']} test prompts of a 3-fold split; {b['train_prompts']} train prompts), {b['episodes']} test",
            "episodes per cell, two simulator settings: *no account limits* (heavy-tailed latency only) and the env's",
            "default *account limits* (ASSUMED: 4 concurrent requests per model, queue 8, timeout 120 s, failed requests",
            "answered by the cheapest model, llama-13b). Budget = share x cost_scale x requests, cost_scale = the most",
            "expensive model's mean cost per prompt. LinUCB is pre-trained on the train prompts"
            f" ({b['pretrain_steps']} bandit steps in Routing-v0 at cost weight 0.2) and keeps learning online in every",
            "episode; the calibrated baseline uses the smallest cost weight whose greedy choices cost at most the budget",
            "per request on the train prompts; the pacer starts each run at multiplier 0. PPO (Stable-Baselines3,",
            "MultiInputPolicy, MLP 128x128, 4 envs, gamma 0.999) is trained per setting on the train prompts with both",
            "budget shares and evaluated deterministically. `hard`: requests after the budget is spent are dropped",
            "(quality 0); `soft`: nothing is enforced. Spend / budget: mean and max over episodes (1.00 = on budget).",
            "Fallback: share of requests answered by the fallback (or failed) after a 429 or timeout.",
            "",
        ]
        for setting, res in b["settings"].items():
            lines += [
                f"### {setting}",
                "",
                f"PPO: {res['ppo']['steps']} steps in {res['ppo']['train_seconds']:.0f} s.",
                "",
                "| budget | policy | spend / budget mean | max | quality per request | dropped | fallback |",
                "|---|---|---|---|---|---|---|",
            ]
            for key, rows in res["results"].items():
                mode, share = key.split("-")
                for pname, r in rows.items():
                    lines.append(
                        f"| {mode}, {share} | {pname} | {r['spend_over_budget_mean']:.3f} | {r['spend_over_budget_max']:.3f} | "
                        f"{r['quality']:.3f} | {r['dropped']:.1%} | {r['fallback']:.1%} |"
                    )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["latency", "drift", "budget", "all", "report"])
    parser.add_argument(
        "--cache-dir", default=None, help="embedding cache (default $ROUTER_RL_CACHE or ~/.cache/router-rl)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="drift: streams per (scenario, policy)")
    parser.add_argument("--steps", type=int, default=12000, help="drift: decisions per stream")
    parser.add_argument(
        "--batch", type=int, default=16, help="drift: vector-env width (decisions per update)"
    )
    parser.add_argument("--requests", type=int, default=100, help="budget: requests per episode")
    parser.add_argument("--episodes", type=int, default=30, help="budget: test episodes per (policy, budget)")
    parser.add_argument(
        "--pretrain-steps", type=int, default=6000, help="budget: LinUCB bandit steps on train prompts"
    )
    parser.add_argument(
        "--ppo-steps", type=int, default=100_000, help="budget: PPO environment steps per setting"
    )
    parser.add_argument(
        "--settings", nargs="*", default=None, help=f"budget: run only these of {list(BUDGET_SETTINGS)}"
    )
    parser.add_argument("--tag", default="", help="suffix of the result file (simulator_<part>_<tag>.json)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = (
        ["latency", "drift", "budget"] if args.part == "all" else [] if args.part == "report" else [args.part]
    )
    for part in parts:
        t0 = time.perf_counter()
        result = {"latency": latency_part, "drift": drift_part, "budget": budget_part}[part](args)
        result["wall_seconds"] = time.perf_counter() - t0
        result["command"] = "python experiments/simulator_study.py " + shlex.join(
            sys.argv[1:] if argv is None else argv
        )
        name = f"simulator_{part}_{args.tag}.json" if args.tag else f"simulator_{part}.json"
        (RESULTS / name).write_text(json.dumps(result, indent=1))
    print(f"[report] {write_report()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
