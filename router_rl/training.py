"""``router-rl train``: embed, simulate, learn from bandit feedback, evaluate, log and export.

The work lives in :func:`train` (a plain function of a composed config, so tests call it directly); the CLI's
``@hydra.main`` wrapper only hands it the config and the run's output directory.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from router_rl.data import DataWarning, assign_splits, kfold_assignments, load_bundled, load_dataset
from router_rl.embeddings import Embedder
from router_rl.evaluation import build_report, summary_table
from router_rl.export import export_artifact, model_entries, write_checkpoint
from router_rl.policies.base import Policy, sample_actions
from router_rl.policies.oracle import Oracle
from router_rl.policies.random import RandomPolicy
from router_rl.policies.zero_router import ZeroRouter
from router_rl.reward import default_cost_scale, reward
from router_rl.tracking import Tracker, flatten
from router_rl.types import RoutingData

log = logging.getLogger(__name__)

BASELINES = {"random": RandomPolicy, "zero_router": ZeroRouter}
KFOLD_MAX_PROMPTS = 2000


# ----------------------------------------------------------------------------------------------- data
def load_data(cfg: DictConfig) -> RoutingData:
    """The dataset a ``data`` config names: bundled or the user's files, through the same loader."""
    if cfg.get("bundled"):
        data = load_bundled(cfg.bundled)
    else:
        data = load_dataset(cfg.outcomes, cfg.prompts, cfg.models)
    complete = data.complete_rows()
    if not complete.all():
        warnings.warn(
            f"{data.name}: {int((~complete).sum())} of {data.n_prompts} prompts lack an outcome for some model; "
            "they are left out of training and evaluation",
            DataWarning,
            stacklevel=2,
        )
        data = data.take(complete)
    if cfg.get("max_prompts"):
        data = data.take(np.arange(min(int(cfg.max_prompts), data.n_prompts)))
    return data


def make_embedder(cfg: DictConfig, *, show_progress: bool = True) -> Embedder:
    return Embedder(
        cfg.model,
        device=cfg.device,
        batch_size=cfg.batch_size,
        max_seq_length=cfg.max_seq_length,
        cache_dir=cfg.cache_dir,
        show_progress=show_progress,
    )


def evaluation_plan(
    data: RoutingData, cfg: DictConfig, data_cfg: DictConfig
) -> tuple[str, str, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """How test predictions are made.

    Returns:
        (scheme, split label, [(train_rows, test_rows)] per fold, rows the exported policy trains on).
        ``kfold-k``: every prompt is tested once by a policy that never saw it, the export trains on all.
        ``holdout``: the data's ``split`` column (or a deterministic prompt-grouped split) gives train+valid
        and test.
    """
    scheme = cfg.scheme
    if scheme == "auto":
        scheme = "kfold" if data.split is None and data.n_prompts < KFOLD_MAX_PROMPTS else "holdout"
    all_rows = np.arange(data.n_prompts)
    if scheme == "kfold":
        folds = kfold_assignments(data.prompt_ids, k=int(cfg.folds), seed=int(data_cfg.split_seed))
        plan = [(all_rows[folds != f], all_rows[folds == f]) for f in range(int(cfg.folds))]
        return f"kfold-{int(cfg.folds)}", "all (cross-fitted)", plan, all_rows
    if scheme == "holdout":
        split = data.split
        if split is None:
            split = assign_splits(
                data.prompt_ids,
                seed=int(data_cfg.split_seed),
                valid_fraction=float(data_cfg.valid_fraction),
                test_fraction=float(data_cfg.test_fraction),
            )
        train_rows, test_rows = all_rows[split != "test"], all_rows[split == "test"]
        if len(train_rows) == 0 or len(test_rows) == 0:
            raise ValueError(
                f"{data.name}: holdout needs train and test prompts; got {len(train_rows)} and {len(test_rows)}"
            )
        return "holdout", "test", [(train_rows, test_rows)], train_rows
    raise ValueError(f"evaluation.scheme must be kfold, holdout or auto; got {cfg.scheme!r}")


# ------------------------------------------------------------------------------------------- learning
def learn(
    policy: Policy,
    data: RoutingData,
    embeddings: np.ndarray,
    rows: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    cost_weight: float,
    cost_scale: float,
    latency_weight: float,
    seed: int,
    env_options: dict[str, Any] | None = None,
    progress: tqdm | None = None,
    on_log: Any = None,
    log_every: int = 0,
) -> dict[str, float]:
    """Train ``policy`` from bandit feedback in a SAME_STEP vector env of :class:`RoutingEnv` on ``rows``.

    Each batch: the policy gives exploring action probabilities for the observed prompts, an action is drawn
    (its propensity kept), the envs reveal the chosen models' outcomes only, and the policy updates on them.
    Pseudo-regret is measured against the per-step best expected reward under the same weights.
    ``env_options`` are further :class:`RoutingEnv` arguments (the ``env`` config group, less its ``id``).
    """
    from router_rl.envs import make_vector_env, step_outcomes
    from router_rl.envs.latency import expected_latency

    env_options = dict(env_options or {})
    latency_sigma = float(env_options.get("latency_sigma", 0.25))
    envs = make_vector_env(
        batch_size,
        data=data,
        embeddings=embeddings,
        rows=rows,
        cost_weight=cost_weight,
        cost_scale=cost_scale,
        latency_weight=latency_weight,
        **env_options,
    )
    rng = np.random.default_rng(seed)
    expected = reward(
        data.quality,
        data.cost_usd,
        expected_latency(data, latency_sigma),
        cost_weight=cost_weight,
        cost_scale=cost_scale,
        latency_weight=latency_weight,
    )
    obs, _ = envs.reset(seed=seed)
    done, total_reward, total_regret, n_batches = 0, 0.0, 0.0, max(1, steps // batch_size)
    curve: dict[str, list[float]] = {"steps": [], "cumulative_regret": [], "reward_mean": []}
    for i in range(n_batches):
        probs = policy.probs(obs, cost_weight=cost_weight, latency_weight=latency_weight, explore=True)
        actions, _ = sample_actions(probs, rng)
        next_obs, rewards, _, _, infos = envs.step(actions)
        out = step_outcomes(infos)
        policy.update(obs, actions, out["quality"], out["cost"], out["latency_s"])
        rows_seen = out["prompt_index"].astype(int)
        regret = expected[rows_seen].max(axis=1) - expected[rows_seen, actions]
        total_reward += float(rewards.sum())
        total_regret += float(regret.sum())
        done += len(actions)
        obs = next_obs
        curve["steps"].append(done)
        curve["cumulative_regret"].append(total_regret)
        curve["reward_mean"].append(total_reward / done)
        if progress is not None:
            progress.update(len(actions))
        if on_log is not None and log_every and ((i + 1) * batch_size) % log_every < batch_size:
            on_log({"train/reward_mean": total_reward / done, "train/cumulative_regret": total_regret}, done)
    envs.close()
    return {
        "reward_mean": total_reward / done,
        "cumulative_regret": total_regret,
        "steps": done,
        "curve": curve,
    }


def make_policy(cfg_policy: DictConfig, models: list[str], dim: int) -> Policy:
    from hydra.utils import instantiate

    return instantiate(cfg_policy, models=list(models), dim=int(dim), _convert_="all")


def policy_label(cfg_policy: DictConfig) -> str:
    """The policy's report name: its class's ``name`` (``linucb``, ``zero_router``...)."""
    from hydra.utils import get_class

    cls = get_class(cfg_policy._target_)
    return str(getattr(cls, "name", cls.__name__.lower()))


# ----------------------------------------------------------------------------------------------- train
def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one training job; returns the report (also written to ``output_dir/report.json``)."""
    from router_rl.plotting import plot_frontier, plot_learning_curves

    t_start = time.perf_counter()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    data = load_data(cfg.data)
    weights = [float(w) for w in cfg.evaluation.cost_weights]
    if data.n_models == 2:  # RouteLLM's curves need the whole range of strong-call shares
        weights = sorted({*weights, *np.geomspace(1e-3, 1e3, 41).round(6).tolist()})
    cost_weight, latency_weight = float(cfg.reward.cost_weight), float(cfg.reward.latency_weight)

    embedder = make_embedder(cfg.embedder)
    t0 = time.perf_counter()
    print(f"[router-rl] embedding {data.n_prompts} prompts with {embedder.model_name} on {embedder.device}")
    embeddings = embedder.encode(list(data.prompts))
    embed_seconds = time.perf_counter() - t0

    scheme, split_label, plan, final_rows = evaluation_plan(data, cfg.evaluation, cfg.data)
    cost_scale = (
        default_cost_scale(data.cost_usd[final_rows])
        if cfg.reward.cost_scale == "auto"
        else float(cfg.reward.cost_scale)
    )
    main_name = policy_label(cfg.policy)
    baselines = [b for b in cfg.evaluation.baselines if b != main_name]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"evaluation.baselines: unknown {unknown}; expected some of {sorted(BASELINES)}")
    learners = [main_name, *baselines]

    tracker = Tracker(bool(cfg.mlflow.enabled))
    run_name = cfg.mlflow.run_name or f"{main_name}-{data.name}-seed{seed}"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    steps, batch = int(cfg.train.steps), int(cfg.train.batch_size)
    total_steps = (
        (len(plan) + (1 if scheme.startswith("kfold") else 0))
        * len(learners)
        * max(1, steps // batch)
        * batch
    )
    env_kw = dict(
        steps=steps,
        batch_size=batch,
        cost_weight=cost_weight,
        cost_scale=cost_scale,
        latency_weight=latency_weight,
        env_options={k: v for k, v in OmegaConf.to_container(cfg.env, resolve=True).items() if k != "id"},
    )

    with tracker.run(
        tracking_uri=cfg.mlflow.tracking_uri,
        experiment=cfg.mlflow.experiment,
        run_name=run_name,
        tags={"router_rl.command": "train", "router_rl.dataset": data.name, "router_rl.policy": main_name},
    ):
        tracker.log_params(flatten(resolved))
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        test_rows = np.concatenate([test for _, test in plan])
        routers: dict[str, dict[float, np.ndarray]] = {name: {w: [] for w in weights} for name in learners}
        oracle = Oracle(data.quality, data.cost_usd, cost_scale)
        train_stats: dict[str, list[dict[str, float]]] = {name: [] for name in learners}
        t0 = time.perf_counter()
        with tqdm(total=total_steps, desc="training", unit="step", dynamic_ncols=True) as bar:
            for fold, (train_rows, fold_test) in enumerate(plan):
                for name in learners:
                    policy = _new_policy(name, cfg, data, embeddings)
                    log_fn = (
                        (
                            lambda m, s, f=fold: tracker.log_metrics(
                                {f"{k}/fold{f}": v for k, v in m.items()}, s
                            )
                        )
                        if name == main_name
                        else None
                    )
                    stats = learn(
                        policy,
                        data,
                        embeddings,
                        train_rows,
                        seed=seed * 1000 + fold,
                        progress=bar,
                        on_log=log_fn,
                        log_every=int(cfg.train.log_every),
                        **env_kw,
                    )
                    train_stats[name].append(stats)
                    if name == main_name:
                        last_main = policy
                    for w in weights:
                        routers[name][w].append(
                            policy.probs(embeddings[fold_test], cost_weight=w, latency_weight=latency_weight)
                        )
            if scheme.startswith("kfold"):
                final = _new_policy(main_name, cfg, data, embeddings)
                learn(
                    final, data, embeddings, final_rows, seed=seed * 1000 + len(plan), progress=bar, **env_kw
                )
            else:
                final = last_main
        train_seconds = time.perf_counter() - t0

        probs = {
            name: {w: np.concatenate(parts) for w, parts in by_w.items()} for name, by_w in routers.items()
        }
        oracle_probs = {w: oracle.probs(test_rows, cost_weight=w) for w in weights}
        report = build_report(
            data,
            test_rows,
            probs,
            scheme=scheme,
            split=split_label,
            cost_scale=cost_scale,
            oracle_probs=oracle_probs,
            extra={
                "policy": main_name,
                "seed": seed,
                "train": {name: _mean_stats(s) for name, s in train_stats.items()},
                "run_id": tracker.run_id,
            },
        )
        report_path = out_dir / "report.json"
        report_path.write_text(json.dumps(report, indent=2))
        plot_path = plot_frontier(report, out_dir / "pareto.png")
        curves_path = plot_learning_curves(
            {name: stats[0]["curve"] for name, stats in train_stats.items()},
            out_dir / "learning_curves.png",
            title=f"{data.name}: online learning in the simulator (fold 0, cost weight {cost_weight:g})",
        )

        context = {
            "catalog_models": model_entries(data.catalog),
            "embedder": {
                "id": embedder.model_name,
                "dim": int(embeddings.shape[1]),
                "max_seq_length": embedder.max_seq_length,
            },
            "cost_scale": cost_scale,
            "cost_weight": cost_weight,
            "latency_weight": latency_weight,
            "dataset": data.name,
            "run_id": tracker.run_id,
        }
        ckpt = write_checkpoint(out_dir / "checkpoint", final, context)
        artifact = export_artifact(final, context, out_dir / cfg.export.dir) if cfg.export.enabled else None

        metrics_out = {"perf/embed_seconds": embed_seconds, "perf/train_seconds": train_seconds}
        for name, entry in report["policies"].items():
            metrics_out[f"eval/{name}/aiq"] = entry["aiq"]
            metrics_out[f"eval/{name}/cost_fraction_at_95"] = entry["cost_fraction_at_95"]
            metrics_out[f"eval/{name}/cost_fraction_at_97"] = entry["cost_fraction_at_97"]
            for p in entry["points"]:
                metrics_out[f"eval/{name}/quality/cw_{p['cost_weight']:g}"] = p["quality"]
                metrics_out[f"eval/{name}/cost_usd/cw_{p['cost_weight']:g}"] = p["cost_usd"]
        for name, entry in report.get("two_model", {}).get("routers", {}).items():
            metrics_out.update({f"eval/{name}/{k}": entry[k] for k in ("apgr", "cpt50", "cpt80")})
        metrics_out["eval/zero_router_hull/aiq"] = report["zero_router"]["aiq"]
        metrics_out["eval/oracle/quality"] = report["oracle"]["quality"]
        metrics_out["eval/oracle/cost_usd"] = report["oracle"]["cost_usd"]
        for name, stats in report["train"].items():
            metrics_out.update({f"train/{name}/{k}": v for k, v in stats.items()})
        metrics_out["perf/total_seconds"] = time.perf_counter() - t_start
        tracker.log_metrics(metrics_out)
        for path in (out_dir / "config.yaml", report_path, plot_path, curves_path):
            tracker.log_artifact(path)
        tracker.log_artifact(ckpt, "checkpoint")
        if artifact is not None:
            tracker.log_artifact(artifact, "router_artifact")

    print(summary_table(report))
    print(f"[router-rl] report: {report_path}\n[router-rl] plot: {plot_path}")
    if artifact is not None:
        print(f"[router-rl] artifact: {artifact}")
    if tracker.run_id:
        print(f"[router-rl] MLflow run {tracker.run_id} ({cfg.mlflow.tracking_uri})")
    print(f"[router-rl] done in {time.perf_counter() - t_start:.1f}s")
    return report


def _new_policy(name: str, cfg: DictConfig, data: RoutingData, embeddings: np.ndarray) -> Policy:
    if name == policy_label(cfg.policy):
        return make_policy(cfg.policy, list(data.models), embeddings.shape[1])
    return BASELINES[name](models=list(data.models), dim=embeddings.shape[1])


def _mean_stats(stats: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0] if k != "curve"}
