"""Closing measurements of judge feedback (issue 4) on the bundled arena data.

1. Reward model: held-out accuracy on the arena judge grades (GPT-4, 1-10, ``quality = score / 10``), by
   5-fold cross-fitting over prompts (every prompt predicted by a model that never saw its grades), next to
   the context-free baseline (each model's mean grade on the training folds). Logged to MLflow.
2. Noisy judge: LinUCB (``configs/policy/linucb.yaml``) trained from bandit feedback graded by a simulated
   judge (``router_rl.envs.wrappers.NoisyJudge``: noise, uniform bias, self-preference) and evaluated, like
   ``router-rl train``, by 5-fold cross-fitting on the RECORDED grades over the cost-weight sweep of
   ``configs/train.yaml``; AIQ per judge setting and feedback budget (bandit steps), averaged over seeds.

Usage:

    python experiments/judge_feedback.py                     # ~5 min of CPU (2 cores, one BLAS thread)
    python experiments/judge_feedback.py --steps 5000 --seeds 0 1 2 --judges recorded 'noise 0.3' --no-mlflow

Writes ``experiments/results/judge_feedback.json`` and ``experiments/results/judge_feedback.md``.
"""

from __future__ import annotations

import os

# One BLAS thread: on 2 shared cores, LinUCB's batched matmuls spent ~8x more CPU spin-waiting with two
# (measured: a 5000-step learn took 13.5 s of CPU with the default threads, 1.7 s with one).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

JUDGES: dict[str, dict[str, Any]] = {
    "recorded": {"source": "recorded"},
    "noise 0.1": {"source": "noisy", "noise_std": 0.1, "step": 0.1},
    "noise 0.2": {"source": "noisy", "noise_std": 0.2, "step": 0.1},
    "noise 0.3": {"source": "noisy", "noise_std": 0.3, "step": 0.1},
    "noise 0.5": {"source": "noisy", "noise_std": 0.5, "step": 0.1},
    "bias +0.1, noise 0.1": {"source": "noisy", "noise_std": 0.1, "bias": 0.1, "step": 0.1},
    "gpt-4* +0.15, noise 0.1": {
        "source": "noisy",
        "noise_std": 0.1,
        "model_bias": {"gpt-4*": 0.15},
        "step": 0.1,
    },
}


def reward_model_accuracy(data, embeddings, *, folds: int, seed: int) -> dict[str, Any]:
    from router_rl.reward_model import cross_validate

    t0 = time.perf_counter()
    res = cross_validate(
        embeddings, data.quality, data.models, prompt_ids=data.prompt_ids, folds=folds, seed=seed
    )
    return {
        "scheme": f"kfold-{folds} over prompts",
        "n_prompts": int(data.n_prompts),
        "n_graded_pairs": int((~np.isnan(data.quality)).sum()),
        "reward_model": res["reward_model"],
        "model_mean_baseline": res["model_mean"],
        "fold_best_epochs": [r["best_epoch"] for r in res["fold_reports"]],
        "seconds": time.perf_counter() - t0,
    }


@contextlib.contextmanager
def judged(judge: dict[str, Any]):
    """Make ``router_rl.training.learn`` draw its feedback from ``judge``: passed as ``judge=`` once training
    has the hook, else by pointing ``router_rl.envs.make_vector_env`` at the judged factory meanwhile."""
    import router_rl.envs
    from router_rl.envs.wrappers import make_feedback_vector_env
    from router_rl.training import learn

    if "judge" in inspect.signature(learn).parameters:
        yield partial(learn, judge=judge)
        return
    saved = router_rl.envs.__dict__.get("make_vector_env")
    router_rl.envs.make_vector_env = partial(make_feedback_vector_env, judge=judge)
    try:
        yield learn
    finally:
        if saved is None:
            del router_rl.envs.make_vector_env
        else:
            router_rl.envs.make_vector_env = saved


def noisy_judge_frontiers(data, embeddings, *, folds: int, seeds: list[int], steps: int, judges: list[str]):
    from router_rl.data import kfold_assignments
    from router_rl.evaluation import build_report
    from router_rl.policies.linucb import LinUCB
    from router_rl.reward import default_cost_scale

    train_cfg = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    policy_cfg = {
        k: v
        for k, v in yaml.safe_load((CONFIGS / "policy" / "linucb.yaml").read_text()).items()
        if k != "_target_"
    }
    weights = [float(w) for w in train_cfg["evaluation"]["cost_weights"]]
    cost_weight = float(yaml.safe_load((CONFIGS / "reward" / "default.yaml").read_text())["cost_weight"])
    cost_scale = default_cost_scale(data.cost_usd)
    rows = np.arange(data.n_prompts)
    out: dict[str, Any] = {}
    for name in judges:
        per_seed = []
        t0 = time.perf_counter()
        for seed in seeds:
            assign = kfold_assignments(data.prompt_ids, k=folds, seed=seed)
            parts: dict[float, list[np.ndarray]] = {w: [] for w in weights}
            test_rows = []
            with judged(
                {**JUDGES[name], **({"seed": seed} if JUDGES[name]["source"] != "recorded" else {})}
            ) as learn:
                for f in range(folds):
                    train, test = rows[assign != f], rows[assign == f]
                    policy = LinUCB(models=list(data.models), dim=embeddings.shape[1], **policy_cfg)
                    learn(
                        policy,
                        data,
                        embeddings,
                        train,
                        steps=steps,
                        batch_size=64,
                        cost_weight=cost_weight,
                        cost_scale=cost_scale,
                        latency_weight=0.0,
                        seed=seed * 1000 + f,
                    )
                    test_rows.append(test)
                    for w in weights:
                        parts[w].append(policy.probs(embeddings[test], cost_weight=w))
            test_rows = np.concatenate(test_rows)
            probs = {w: np.concatenate(p) for w, p in parts.items()}
            report = build_report(
                data,
                test_rows,
                {"linucb": probs},
                scheme=f"kfold-{folds}",
                split="all (cross-fitted)",
                cost_scale=cost_scale,
            )
            entry = report["policies"]["linucb"]
            at = {p["cost_weight"]: p for p in entry["points"]}
            per_seed.append(
                {
                    "seed": seed,
                    "aiq": entry["aiq"],
                    "cost_fraction_at_95": entry["cost_fraction_at_95"],
                    "quality_at_w0": at[0.0]["quality"],
                    "cost_at_w0": at[0.0]["cost_usd"],
                    f"quality_at_w{cost_weight:g}": at[cost_weight]["quality"],
                    f"cost_at_w{cost_weight:g}": at[cost_weight]["cost_usd"],
                    "zero_router_aiq": report["zero_router"]["aiq"],
                    "best_single_model": report["best_single_model"],
                    "oracle_quality": report["oracle"]["quality"],
                }
            )
        aiqs = np.array([s["aiq"] for s in per_seed])
        out[name] = {
            "judge": JUDGES[name],
            "aiq_mean": float(aiqs.mean()),
            "aiq_std": float(aiqs.std(ddof=1)) if len(aiqs) > 1 else None,
            "seeds": per_seed,
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"  {name:<26} AIQ {aiqs.mean():.4f}" + (f" ± {aiqs.std(ddof=1):.4f}" if len(aiqs) > 1 else ""),
            flush=True,
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    rm = result["reward_model"]
    lines = [
        "# Judge feedback on the bundled arena data",
        "",
        f"Produced by `python experiments/judge_feedback.py {result['argv']}` in {result['seconds']:.0f} s "
        "on this 2-core CPU machine (shared).",
        "",
        f"## Reward model: held-out accuracy on the arena judge grades ({rm['scheme']})",
        "",
        f"{rm['n_graded_pairs']} GPT-4 grades (1-10, quality = grade / 10) of 16 models on {rm['n_prompts']} prompts; "
        "every prediction comes from a fold that never saw that prompt's grades.",
        "",
        "| predictor | MAE | RMSE | rank corr. per prompt (Spearman, mean) | top-1 gap | calibration error |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in (
        ("reward model (MLP on the prompt embedding)", rm["reward_model"]),
        ("each model's mean grade (no prompt)", rm["model_mean_baseline"]),
    ):
        lines.append(
            f"| {label} | {m['mae']:.4f} | {m['rmse']:.4f} | {m['rank_corr']:.4f} ({m['n_ranked']} prompts) "
            f"| {m['top1_gap']:.4f} | {m['calibration_error']:.4f} |"
        )
    budgets = result["noisy_judge"]
    first = next(iter(next(iter(budgets.values())).values()))["seeds"][0]
    lines += [
        "",
        "top-1 gap: mean over prompts of (best recorded quality - recorded quality of the model predicted best).",
        "",
        "## What a noisy judge does to the trained router's frontier",
        "",
        f"LinUCB (configs/policy/linucb.yaml), {' or '.join(map(str, result['args']['steps']))} bandit steps per fold, "
        f"{result['args']['folds']}-fold cross-fitting over the {result['n_complete']} prompts every model answered, "
        f"seeds {result['args']['seeds']}; feedback graded by the simulated judge, evaluation on the recorded grades. "
        f"Zero router (hull of the single models) AIQ {first['zero_router_aiq']:.4f}; oracle quality "
        f"{first['oracle_quality']:.3f}.",
        "",
        "| judge (feedback the policy learns from) | "
        + " | ".join(f"AIQ, {b} steps (mean ± sd) | quality / cost at w=0, {b} steps" for b in budgets)
        + " |",
        "|---|" + "---|---|" * len(budgets),
    ]
    for name in next(iter(budgets.values())):
        cells = []
        for by_judge in budgets.values():
            e = by_judge[name]
            sd = f" ± {e['aiq_std']:.4f}" if e["aiq_std"] is not None else ""
            q0 = np.mean([s["quality_at_w0"] for s in e["seeds"]])
            c0 = np.mean([s["cost_at_w0"] for s in e["seeds"]])
            cells += [f"{e['aiq_mean']:.4f}{sd}", f"{q0:.4f} / ${c0:.5f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5, help="k of the cross-fitting over prompts")
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[10000, 2000], help="feedback budgets: bandit steps per fold"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="seeds of folds, exploration and noise"
    )
    parser.add_argument(
        "--judges", nargs="+", default=list(JUDGES), choices=list(JUDGES), help="judge settings"
    )
    parser.add_argument(
        "--no-mlflow", action="store_true", help="do not log the reward model's accuracy to MLflow"
    )
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    opts = parser.parse_args()
    warnings.simplefilter("ignore")
    t_start = time.perf_counter()

    from router_rl.data import load_bundled
    from router_rl.embeddings import Embedder, default_cache_dir

    data = load_bundled("arena")
    embeddings = Embedder(cache_dir=default_cache_dir()).encode(list(data.prompts))
    print(f"reward model: {opts.folds}-fold cross-fitting on {data.n_prompts} prompts", flush=True)
    rm = reward_model_accuracy(data, embeddings, folds=opts.folds, seed=0)
    for label, key in (("reward model", "reward_model"), ("model means", "model_mean_baseline")):
        m = rm[key]
        print(
            f"  {label:<14} MAE {m['mae']:.4f}  rank corr {m['rank_corr']:.4f}  top-1 gap {m['top1_gap']:.4f}  "
            f"calibration {m['calibration_error']:.4f}",
            flush=True,
        )
    run_id = None
    if not opts.no_mlflow:
        from router_rl.reward_model import log_metrics
        from router_rl.tracking import Tracker

        tracker = Tracker(True)
        with tracker.run(
            tracking_uri=opts.tracking_uri,
            experiment="router-rl-judge",
            run_name="reward-model-arena",
            tags={"router_rl.command": "experiments/judge_feedback.py", "router_rl.dataset": "arena"},
        ):
            tracker.log_params({"folds": str(opts.folds), "hidden": "64", "dataset": "arena"})
            log_metrics(tracker, {"heldout": rm["reward_model"], "baseline": rm["model_mean_baseline"]})
        run_id = tracker.run_id

    complete = data.take(data.complete_rows())
    nj = {}
    for steps in opts.steps:
        print(f"noisy judge: LinUCB, {steps} steps x {opts.folds} folds x seeds {opts.seeds}", flush=True)
        nj[str(steps)] = noisy_judge_frontiers(
            complete,
            embeddings[data.complete_rows()],
            folds=opts.folds,
            seeds=opts.seeds,
            steps=steps,
            judges=opts.judges,
        )
    argv = " ".join(
        ["--steps " + " ".join(map(str, opts.steps)), "--seeds " + " ".join(map(str, opts.seeds))]
        + ([f"--folds {opts.folds}"] if opts.folds != 5 else [])
        + (["--no-mlflow"] if opts.no_mlflow else [])
    )
    result = {
        "argv": argv,
        "args": {"folds": opts.folds, "steps": opts.steps, "seeds": opts.seeds},
        "n_complete": int(complete.n_prompts),
        "reward_model": rm,
        "mlflow_run_id": run_id,
        "noisy_judge": nj,
        "seconds": time.perf_counter() - t_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "judge_feedback.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "judge_feedback.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
