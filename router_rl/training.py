"""``router-rl train``: embed, simulate, learn from bandit feedback, evaluate, log and export.

The work lives in :func:`train` (a plain function of a composed config, so tests call it directly); the CLI's
``@hydra.main`` wrapper only hands it the config and the run's output directory.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from router_rl.data import DataWarning, assign_splits, kfold_assignments, load_bundled, load_dataset
from router_rl.embeddings import Embedder, EmbeddingWarning
from router_rl.evaluation import (
    aggregate_reports,
    build_report,
    summary_table,
    to_json,
    training_prompts_record,
    warn_if_trained_on,
)
from router_rl.export import export_artifact, model_entries, write_checkpoint
from router_rl.policies.base import Policy, greedy_probs, sample_actions
from router_rl.policies.oracle import Oracle
from router_rl.policies.random import RandomPolicy
from router_rl.policies.zero_router import ZeroRouter
from router_rl.representation import (
    Representation,
    identical_embeddings,
    learn_affixes,
    templates_inform,
)
from router_rl.representation import from_config as representation_config
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


def make_embedder(
    cfg: DictConfig, *, show_progress: bool = True, representation: Representation | None = None
) -> Embedder:
    """The encoder an ``embedder`` config names (a static one is distilled first, once per machine), reading
    prompts under ``representation`` (default: the config's window, no affixes: :func:`prepare` learns
    those from the training prompts)."""
    model, name = str(cfg.model), None
    if cfg.get("distill"):
        from router_rl.static_encoder import distill

        spec = cfg.distill
        path, name = distill(
            model,
            dim=int(spec.get("dim", 256)),
            sif_coefficient=spec.get("sif_coefficient", 1e-5),
            max_vocab=spec.get("max_vocab"),
            fit=OmegaConf.to_container(spec.fit) if spec.get("fit") else None,
            cache_dir=cfg.cache_dir,
            device=cfg.device,
            batch_size=int(spec.get("batch_size", 1024)),
            show_progress=show_progress,
        )
        model = str(path)
    if representation is None:
        representation, _ = representation_config(cfg.get("representation"))
    return Embedder(
        model,
        name=name,
        backend=str(cfg.get("backend", "torch")),
        device=cfg.device,
        batch_size=cfg.batch_size,
        max_seq_length=cfg.max_seq_length,
        cache_dir=cfg.cache_dir,
        show_progress=show_progress,
        representation=representation,
    )


def fit_representation(
    cfg: DictConfig, texts: list[str], quality: np.ndarray | None = None
) -> Representation:
    """The ``embedder.representation`` config's window, with the affixes learned from ``texts`` (the training
    prompts) when ``affixes.enabled`` (``mode: center``: and how many of them matched each). ``mode: auto``
    centers when the matched templates tell the prompts' outcomes apart (``quality``: (N, K) for ``texts``;
    :func:`~router_rl.representation.templates_inform`), and drops them otherwise or without outcomes; the
    artifact records the mode chosen and the test."""
    rep, learn = representation_config(cfg.get("representation"))
    auto, alpha = learn.pop("auto"), learn.pop("auto_alpha")
    if not learn.pop("enabled"):
        return rep
    prefixes, suffixes, record = learn_affixes(texts, **learn)
    rep = rep.with_affixes(prefixes, suffixes, record)
    if auto and quality is not None and (rep.prefixes or rep.suffixes):
        test = templates_inform(rep, texts, quality, alpha)
        record = {**record, "auto": {"alpha": alpha, **test}}
        rep = replace(rep, affix_mode="center" if test["center"] else "drop", learned=record)
    return rep.with_counts(texts)


def warn_identical(texts: list[str], embeddings: np.ndarray, embedder: Embedder, threshold: float) -> int:
    """Warn (one line, with counts) when more than ``threshold`` of the prompts embed bitwise identically to
    a prompt whose text differs: the encoder saw the same input for them. Returns how many do."""
    n, groups = identical_embeddings(texts, embeddings)
    if len(texts) and n > threshold * len(texts):
        limit = f"the first {embedder.max_seq_length} tokens" if embedder.max_seq_length else "its tokens"
        warnings.warn(
            f"{n} of {len(texts)} prompts ({n / len(texts):.1%}) embed identically to a prompt with a different "
            f"text ({groups} groups); {embedder.model_name} read {limit} under representation "
            f"'{embedder.representation.describe()}': remove shared templates (embedder.representation.affixes)"
            " or read the end too (embedder.representation.window=head_tail or chunks)",
            EmbeddingWarning,
            stacklevel=2,
        )
    return n


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
        k = kfold_count(data, int(cfg.folds))
        folds = kfold_assignments(data.prompt_ids, k=k, seed=int(data_cfg.split_seed))
        plan = [(all_rows[folds != f], all_rows[folds == f]) for f in range(k)]
        return f"kfold-{k}", "all (cross-fitted)", plan, all_rows
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
            source = f"data.test_fraction={data_cfg.test_fraction}" if data.split is None else "its split"
            raise ValueError(
                f"evaluation.scheme=holdout: {data.name} needs train and test prompts; {source} gives "
                f"{len(train_rows)} and {len(test_rows)}; set evaluation.scheme=kfold for small data"
            )
        return "holdout", "test", [(train_rows, test_rows)], train_rows
    raise ValueError(f"evaluation.scheme must be kfold, holdout or auto; got {cfg.scheme!r}")


def kfold_count(data: RoutingData, folds: int) -> int:
    """``evaluation.folds``, lowered (with one line saying so) to the number of prompts of small data."""
    n = len(np.unique(np.asarray(data.prompt_ids).astype(str)))
    if folds < 2:
        raise ValueError(f"evaluation.folds must be >= 2 for k-fold cross-fitting, got {folds}")
    if n < 2:
        raise ValueError(
            f"evaluation.scheme=kfold: {data.name} has {n} prompt; cross-fitting needs at least 2 "
            "(every prompt is tested by a policy trained on the others)"
        )
    if folds > n:
        print(f"[router-rl] {data.name} has {n} prompts: {n}-fold cross-fitting (evaluation.folds={folds})")
        return n
    return folds


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
    judge: dict[str, Any] | None = None,
    progress: tqdm | None = None,
    on_log: Any = None,
    log_every: int = 0,
    explore_cost_weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Train ``policy`` from bandit feedback in a SAME_STEP vector env of :class:`RoutingEnv` on ``rows``.

    Each batch: the policy gives exploring action probabilities for the observed prompts, an action is drawn
    (its propensity kept), the envs reveal the chosen models' outcomes only, and the policy updates on them.
    Pseudo-regret is measured against the per-step best expected reward under the same weights.
    ``explore_cost_weights``: each batch decides at a cost weight drawn uniformly from these (a seeded
    generator of its own) instead of ``cost_weight``, so a policy whose heads serve every weight explores the
    whole frontier (the expensive models at small weights, the cheap ones at large), not only what is worth
    trying at one weight; reward and regret are then those of each batch's own weight.
    ``env_options`` are further :class:`RoutingEnv` arguments (the ``env`` config group, less its ``id``);
    ``judge`` (the ``judge`` config group) says where the revealed quality comes from: the recorded grades, a
    noisy judge or a reward model (:func:`router_rl.envs.wrappers.make_feedback_vector_env`).
    """
    from router_rl.envs import step_outcomes
    from router_rl.envs.wrappers import make_feedback_vector_env

    env_options = dict(env_options or {})
    envs = make_feedback_vector_env(
        batch_size,
        judge=judge,
        data=data,
        embeddings=embeddings,
        rows=rows,
        cost_weight=cost_weight,
        cost_scale=cost_scale,
        latency_weight=latency_weight,
        **env_options,
    )
    rng = np.random.default_rng(seed)
    # the simulator's own expected rewards, one table per regime of a drift scenario (change points)
    truth = envs.envs[0].unwrapped
    points = truth.traffic.scenario.change_points() if truth.traffic is not None else []
    sweep = None if not explore_cost_weights else np.asarray(explore_cost_weights, dtype=np.float64)
    if sweep is None:
        regimes = [truth.expected_rewards(s) for s in [0, *points]]
    else:  # the expected outcomes, weighted at each batch's own cost weight
        outcomes = [truth.expected_outcomes(s) for s in [0, *points]]
        weight_rng = np.random.default_rng([seed, 11])
    obs, _ = envs.reset(seed=seed)
    done, total_reward, total_regret, n_batches = 0, 0.0, 0.0, max(1, steps // batch_size)
    curve: dict[str, list[float]] = {"steps": [], "cumulative_regret": [], "reward_mean": []}
    for i in range(n_batches):
        w = cost_weight if sweep is None else float(sweep[weight_rng.integers(len(sweep))])
        probs = policy.probs(obs, cost_weight=w, latency_weight=latency_weight, explore=True)
        actions, _ = sample_actions(probs, rng)
        next_obs, rewards, _, _, infos = envs.step(actions)
        out = step_outcomes(infos)
        policy.update(obs, actions, out["quality"], out["cost"], out["latency_s"])
        rows_seen = out["prompt_index"].astype(int)
        regime = (
            np.searchsorted(points, infos["final_info"]["step"], side="right")
            if points
            else np.zeros(len(rows_seen), dtype=int)
        )
        if sweep is None:
            exp = np.stack([regimes[r][p] for r, p in zip(regime, rows_seen, strict=True)])
        else:
            q, c, lat = (
                np.stack([outcomes[r][j][p] for r, p in zip(regime, rows_seen, strict=True)])
                for j in range(3)
            )
            exp = reward(q, c, lat, cost_weight=w, cost_scale=cost_scale, latency_weight=latency_weight)
            rewards = out["quality"] - w * out["cost"] - latency_weight * out["latency_s"]
        regret = exp.max(axis=1) - exp[np.arange(len(actions)), actions]
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


EXPERIMENT_KEYS = ("label", "warm_start")
"""Keys of a policy config read by the experiment, not passed to the policy's constructor."""


def make_policy(cfg_policy: DictConfig, models: list[str], dim: int) -> Policy:
    """Instantiate ``cfg_policy`` for ``models``; a ``warm_start`` block is kept on the policy as
    ``warm_start_spec`` for :func:`fit_policy`."""
    from hydra.utils import instantiate

    spec = cfg_policy.get("warm_start")
    kwargs = {k: v for k, v in cfg_policy.items() if k not in EXPERIMENT_KEYS}
    policy = instantiate(OmegaConf.create(kwargs), models=list(models), dim=int(dim), _convert_="all")
    if spec is not None and float(spec.get("fraction", 0.0)) > 0:
        if not callable(getattr(policy, "warm_start", None)):
            raise ValueError(
                f"policy {policy_label(cfg_policy)}: warm_start is set but the policy has no warm_start"
            )
        replay = spec.get("replay", True)
        if not isinstance(replay, bool):
            raise ValueError(
                f"policy {policy_label(cfg_policy)}: warm_start.replay must be true or false, got {replay!r}"
            )
        policy.warm_start_spec = {
            "fraction": float(spec.fraction),
            "weight": float(spec.get("weight", 1.0)),
            "replay": replay,
        }
    return policy


def policy_label(cfg_policy: DictConfig) -> str:
    """The policy's report name: its config's ``label`` if set, else its class's ``name`` (``linucb``...)."""
    from hydra.utils import get_class

    if cfg_policy.get("label"):
        return str(cfg_policy.label)
    cls = get_class(cfg_policy._target_)
    return str(getattr(cls, "name", cls.__name__.lower()))


# ------------------------------------------------------------------------------------------ experiment
PolicyFactory = Callable[[list[str], int, int], Policy]
"""Builds a fresh policy for the data's models, embedding dimension and run seed (``${seed}`` in its config)."""


@dataclass
class Setup:
    """Everything a comparison shares: the data, its embeddings, the evaluation plan and the reward."""

    data: RoutingData
    embeddings: np.ndarray
    embedder: Embedder
    embed_seconds: float
    scheme: str
    split_label: str
    plan: list[tuple[np.ndarray, np.ndarray]]
    final_rows: np.ndarray
    cost_scale: float
    cost_weight: float
    latency_weight: float
    weights: list[float]
    env_options: dict[str, Any]
    judge: dict[str, Any] | None = None

    @property
    def test_rows(self) -> np.ndarray:
        return np.concatenate([test for _, test in self.plan])


def prepare(cfg: DictConfig) -> Setup:
    """Load and embed the data, fix the evaluation plan, the cost scale and the cost-weight sweep."""
    from router_rl.progress import interactive

    data = load_data(cfg.data)
    weights = [float(w) for w in cfg.evaluation.cost_weights]
    if data.n_models == 2:  # RouteLLM's curves need the whole range of strong-call shares
        weights = sorted({*weights, *np.geomspace(1e-3, 1e3, 41).round(6).tolist()})
    scheme, split_label, plan, final_rows = evaluation_plan(data, cfg.evaluation, cfg.data)
    t0 = time.perf_counter()
    prompts = list(data.prompts)
    # affixes come from the prompts the exported policy trains on (unlabelled text: all of them under k-fold)
    # (mode auto: and whether their templates tell outcomes apart, on the same prompts' recorded outcomes)
    representation = fit_representation(
        cfg.embedder, [prompts[i] for i in final_rows], data.quality[final_rows]
    )
    embedder = make_embedder(cfg.embedder, representation=representation, show_progress=interactive())
    print(
        f"[router-rl] embedding {data.n_prompts} prompts with {embedder.model_name} on {embedder.device} "
        f"({representation.describe()})"
    )
    auto = representation.learned.get("auto")
    if auto:  # affixes.mode auto: say what was chosen and why
        verdict = "differ: centered" if auto["center"] else "do not differ: dropped"
        print(
            f"[router-rl] templates: outcomes across the {auto['groups']} groups of matched templates {verdict} "
            f"(ANOVA per model, Bonferroni p = {auto['p_value']:.2g}, level {auto['alpha']:g})"
        )
    embeddings = embedder.encode(prompts)
    warn_identical(prompts, embeddings, embedder, float(cfg.embedder.get("identical_warning", 0.05)))
    cost_scale = (
        default_cost_scale(data.cost_usd[final_rows])
        if cfg.reward.cost_scale == "auto"
        else float(cfg.reward.cost_scale)
    )
    return Setup(
        data=data,
        embeddings=embeddings,
        embedder=embedder,
        embed_seconds=time.perf_counter() - t0,
        scheme=scheme,
        split_label=split_label,
        plan=plan,
        final_rows=final_rows,
        cost_scale=cost_scale,
        cost_weight=float(cfg.reward.cost_weight),
        latency_weight=float(cfg.reward.latency_weight),
        weights=weights,
        env_options={k: v for k, v in OmegaConf.to_container(cfg.env, resolve=True).items() if k != "id"},
        judge=OmegaConf.to_container(cfg.judge, resolve=True) if "judge" in cfg else None,
    )


def runs_bandit_phase(policy: Policy) -> bool:
    """Whether :func:`fit_policy` gives ``policy`` a bandit phase in the simulator (the progress bar's steps):
    not for a supervised router, nor for a warm start that labels every training prompt and replays none."""
    spec = getattr(policy, "warm_start_spec", None)
    if getattr(policy, "supervised", False):
        return False
    return not (spec and not spec.get("replay", True) and spec["fraction"] >= 1.0)


def fit_policy(
    policy: Policy,
    setup: Setup,
    rows: np.ndarray,
    *,
    cfg: DictConfig,
    seed: int,
    progress: tqdm | None = None,
    on_log: Any = None,
) -> dict[str, Any]:
    """Train ``policy`` on prompt ``rows``: from bandit feedback in the simulator (:func:`learn`), or, for a
    supervised router (``policy.supervised``: kNN, MLP, RouteLLM's), from the full outcome table of those
    rows. A policy with a ``warm_start_spec`` (its config's ``warm_start`` block) first takes a seeded share of
    ``rows`` with full outcomes as its prior, then learns from bandit feedback on all of ``rows``, or, with
    ``replay: false``, on the rows the prior did not label only (none when ``fraction`` is 1: the simulator's
    recorded grades of a labelled prompt would only repeat what the prior holds)."""
    from router_rl.envs.latency import expected_latency

    d = setup.data
    spec = getattr(policy, "warm_start_spec", None)
    # a bandit may have ``fit`` too (neural TS: an optional prior); only supervised routers skip the bandit loop
    supervised = bool(getattr(policy, "supervised", False))
    if supervised or spec:
        latency = expected_latency(d, float(setup.env_options.get("latency_sigma", 0.25)))
    if supervised:
        policy.fit(
            setup.embeddings[rows], d.quality[rows], d.cost_usd[rows] / setup.cost_scale, latency[rows]
        )
        return {"steps": 0, "full_information": 1.0}
    warm = 0
    if spec:  # PILOT-style prior: a share of the training prompts come with every model's outcome
        warm = min(len(rows), max(1, round(spec["fraction"] * len(rows))))
        labelled = np.sort(np.random.default_rng([seed, 7]).choice(rows, size=warm, replace=False))
        policy.warm_start(
            setup.embeddings[labelled],
            d.quality[labelled],
            d.cost_usd[labelled] / setup.cost_scale,
            latency[labelled],
            weight=spec["weight"],
        )
        if not spec.get("replay", True):
            rows = np.setdiff1d(rows, labelled)
        if not runs_bandit_phase(policy) or len(rows) == 0:
            return {"steps": 0, "full_information": 1.0, "warm_start_prompts": float(warm)}
    stats = learn(
        policy,
        setup.data,
        setup.embeddings,
        rows,
        steps=int(cfg.train.steps),
        batch_size=int(cfg.train.batch_size),
        cost_weight=setup.cost_weight,
        cost_scale=setup.cost_scale,
        latency_weight=setup.latency_weight,
        env_options=setup.env_options,
        judge=setup.judge,
        seed=seed,
        progress=progress,
        on_log=on_log,
        log_every=int(cfg.train.log_every),
        explore_cost_weights=explore_weights(cfg, setup),
    )
    return {**stats, "warm_start_prompts": float(warm)} if spec else stats


def explore_weights(cfg: DictConfig, setup: Setup) -> list[float] | None:
    """The cost weights bandit training draws from (``train.cost_weights``): ``sweep`` = the evaluation sweep
    (``setup.weights``), ``fixed`` (None) = ``reward.cost_weight`` only, or an explicit list."""
    spec = cfg.train.get("cost_weights", "fixed")
    if spec in (None, "fixed"):
        return None
    if spec == "sweep":
        return list(setup.weights)
    if isinstance(spec, str):
        raise ValueError(f"train.cost_weights must be fixed, sweep or a list of weights >= 0; got {spec!r}")
    weights = [float(w) for w in spec]
    if not weights or min(weights) < 0:
        raise ValueError(f"train.cost_weights must be a non-empty list of weights >= 0; got {weights}")
    return weights


def cross_fit(
    setup: Setup,
    learners: dict[str, PolicyFactory],
    *,
    cfg: DictConfig,
    seed: int,
    bar: tqdm,
    tracker: Tracker,
    log_name: str | None = None,
) -> tuple[dict[str, dict[float, np.ndarray]], dict[str, list[dict[str, Any]]], dict[str, Policy]]:
    """Train every learner on each fold's training rows and predict its test rows at every cost weight.

    Returns (router -> weight -> (N_test, K) probabilities in ``setup.test_rows`` order, training stats per
    fold, the last fold's policy per learner)."""
    parts: dict[str, dict[float, list[np.ndarray]]] = {n: {w: [] for w in setup.weights} for n in learners}
    stats: dict[str, list[dict[str, Any]]] = {n: [] for n in learners}
    last: dict[str, Policy] = {}
    for fold, (train_rows, test_rows) in enumerate(setup.plan):
        for name, factory in learners.items():
            on_log = _fold_logger(tracker, fold) if name == log_name else None
            policy = factory(list(setup.data.models), int(setup.embeddings.shape[1]), seed)
            stats[name].append(
                fit_policy(
                    policy, setup, train_rows, cfg=cfg, seed=seed * 1000 + fold, progress=bar, on_log=on_log
                )
            )
            last[name] = policy
            x = setup.embeddings[test_rows]
            for w in setup.weights:
                parts[name][w].append(policy.probs(x, cost_weight=w, latency_weight=setup.latency_weight))
    probs = {n: {w: np.concatenate(p) for w, p in by_w.items()} for n, by_w in parts.items()}
    return probs, stats, last


def artifact_probs(setup: Setup, path: str, cfg: DictConfig) -> dict[float, np.ndarray]:
    """An exported artifact's greedy decisions on the test rows at every cost weight (its own embedder)."""
    from router_rl.serve.artifact import decision_scores, load_artifact

    artifact = load_artifact(path, device=cfg.embedder.device)
    warn_if_trained_on(path, artifact.manifest, setup.data.name, setup.data.prompts[setup.test_rows])
    if artifact.models != list(setup.data.models):
        raise ValueError(
            f"artifact {path} routes over {artifact.models}, the data has {list(setup.data.models)}; "
            "evaluate it on data with the same models"
        )
    # the artifact's own encoder and representation, as its router applies them
    from router_rl.serve.router import Router

    router = Router(artifact, embedder=_reusable(setup.embedder, artifact), cache_dir=cfg.embedder.cache_dir,
                    encoder_backend=str(cfg.embedder.get("backend", "torch")))  # fmt: skip
    same = router.embedder is setup.embedder
    x = setup.embeddings[setup.test_rows] if same else router.embed(list(setup.data.prompts[setup.test_rows]))
    out = {}
    for w in setup.weights:
        scores, _ = decision_scores(artifact, x, cost_weight=w, latency_weight=setup.latency_weight)
        out[w] = greedy_probs(scores)
    return out


def _reusable(embedder: Embedder, artifact: Any) -> Embedder | None:
    """``embedder`` when it is the artifact's encoder (same id and truncation), else None (load its own)."""
    emb = artifact.manifest["embedder"]
    kind = emb.get("kind", "transformer")
    length = None if kind == "static" else int(emb.get("max_seq_length", 256))
    same = emb["id"] == embedder.model_name and kind == embedder.kind and embedder.max_seq_length == length
    return embedder if same else None


def task_labels(data: RoutingData, cfg: DictConfig) -> np.ndarray | None:
    """(N,) the task of every prompt from ``evaluation.task_column`` (None: no task column). ``source_benchmark``
    (the bundled data's) is the loader's; another column is read from the custom data's outcomes table, else
    its prompts table (first value per prompt)."""
    column = cfg.evaluation.get("task_column", "source_benchmark")
    if not column:
        return None
    if column == "source_benchmark" or cfg.data.get("bundled"):
        return None if data.groups is None else np.asarray(data.groups).astype(str)
    from router_rl.data import _read

    for key in ("outcomes", "prompts"):
        table = _read(cfg.data[key]).df
        if column in table.columns:
            first = table.drop_duplicates("prompt_id")
            first.index = first["prompt_id"].astype(str)
            labels = first[column].reindex(np.asarray(data.prompt_ids).astype(str))
            if labels.isna().any():
                raise ValueError(
                    f"evaluation.task_column={column!r}: {int(labels.isna().sum())} prompts of {cfg.data[key]} "
                    "have no value; expected a task label for every prompt"
                )
            return labels.astype(str).to_numpy()
    raise ValueError(
        f"evaluation.task_column={column!r} is in neither {cfg.data.outcomes} nor {cfg.data.prompts}; "
        "name a column of one of them, or null for no task yardstick"
    )


def yardsticks(setup: Setup, cfg: DictConfig) -> dict[str, dict[float, np.ndarray]]:
    """The fixed yardsticks of ``evaluation.yardsticks`` on the test rows: ``task_mean`` (each model's mean
    quality and cost per task on each fold's training rows; only where the data has more than one task)."""
    from router_rl.evaluation import task_mean_probs

    out = {}
    names = list(cfg.evaluation.get("yardsticks", []) or [])
    unknown = [n for n in names if n != "task_mean"]
    if unknown:
        raise ValueError(f"evaluation.yardsticks: unknown {unknown}; expected some of ['task_mean']")
    tasks = task_labels(setup.data, cfg) if names else None
    if "task_mean" in names and tasks is not None and len(set(tasks.tolist())) > 1:
        d = setup.data
        cost = d.cost_usd / setup.cost_scale
        out["task_mean"] = task_mean_probs(tasks, d.quality, cost, setup.plan, setup.weights)
    return out


def compare_with_rivals(
    per_seed: list[dict[str, dict[float, np.ndarray]]],
    fixed: dict[str, dict[float, np.ndarray]],
    main_name: str,
    setup: Setup,
    max_cost: float,
    cfg: DictConfig,
) -> dict[str, Any] | None:
    """Paired bootstrap intervals of the main router's AIQ minus every other router's (``evaluation.bootstrap``)."""
    from router_rl.evaluation import paired_comparisons

    spec = cfg.evaluation.get("bootstrap", {}) or {}
    n_boot = int(spec.get("n_boot", 1000))
    if n_boot <= 0:
        return None
    rows = setup.test_rows
    return paired_comparisons(
        [{**p, **fixed} for p in per_seed], main_name, setup.data.quality[rows], setup.data.cost_usd[rows],
        max_cost=max_cost, n_boot=n_boot, level=float(spec.get("level", 0.95)), seed=int(spec.get("seed", 0)),
    )  # fmt: skip


def run_comparison(
    cfg: DictConfig,
    output_dir: str | Path,
    *,
    command: str,
    learners: dict[str, PolicyFactory],
    main_name: str,
    seeds: list[int],
    artifacts: dict[str, str] | None = None,
    export_from: PolicyFactory | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``learners`` (and evaluate ``artifacts``) over ``seeds``; write ``report.json``,
    ``pareto.png`` and ``learning_curves.png``; log one MLflow run; export ``export_from`` when given."""
    from threadpoolctl import threadpool_limits

    from router_rl.plotting import plot_frontier, plot_learning_curves
    from router_rl.progress import progress

    t_start = time.perf_counter()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the per-arm algebra is small: BLAS threads only contend (about 8x more CPU for LinUCB on 2 cores)
    threadpool_limits(int(cfg.train.get("blas_threads", 1)), user_api="blas")
    setup = prepare(cfg)
    data = setup.data
    tracker = Tracker(bool(cfg.mlflow.enabled))
    seed_text = ",".join(map(str, seeds))
    default_name = (  # an eval run reads as one: eval-<data>-<routers compared>-seed<seeds>
        f"eval-{data.name}-{'+'.join([*learners, *(artifacts or {})])}-seed{seed_text}"
        if command == "eval"
        else f"{main_name}-{data.name}-seed{seed_text}"
    )
    run_name = cfg.mlflow.run_name or default_name[:250]
    bandit_steps = max(1, int(cfg.train.steps) // int(cfg.train.batch_size)) * int(cfg.train.batch_size)
    models, dim = list(data.models), int(setup.embeddings.shape[1])
    learns = {n: runs_bandit_phase(f(models, dim, seeds[0])) for n, f in learners.items()}
    n_fits = len(setup.plan) * sum(learns.values()) * len(seeds)
    n_fits += 1 if export_from is not None and learns.get(main_name, True) else 0

    with tracker.run(
        tracking_uri=cfg.mlflow.tracking_uri,
        experiment=cfg.mlflow.experiment,
        run_name=run_name,
        parent_run_id=cfg.mlflow.get("parent_run_id"),
        tags={"router_rl.command": command, "router_rl.dataset": data.name, "router_rl.policy": main_name},
    ):
        tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        oracle = Oracle(data.quality, data.cost_usd, setup.cost_scale)
        oracle_probs = {w: oracle.probs(setup.test_rows, cost_weight=w) for w in setup.weights}
        fixed = {name: artifact_probs(setup, path, cfg) for name, path in (artifacts or {}).items()}
        fixed.update(yardsticks(setup, cfg))  # task_mean where the data has tasks
        per_seed, all_stats, final = [], {}, None
        t0 = time.perf_counter()

        def report_of(probs: dict[str, dict[float, np.ndarray]], max_cost: float | None) -> dict[str, Any]:
            return build_report(
                data,
                setup.test_rows,
                {**probs, **fixed},
                scheme=setup.scheme,
                split=setup.split_label,
                cost_scale=setup.cost_scale,
                oracle_probs=oracle_probs,
                max_cost=max_cost,
            )

        with progress(n_fits * bandit_steps, command, unit="step") as bar:  # a bar, or a few lines in a log
            for seed in seeds:
                probs, stats, last = cross_fit(
                    setup, learners, cfg=cfg, seed=seed, bar=bar, tracker=tracker,
                    log_name=main_name if seed == seeds[0] else None,
                )  # fmt: skip
                all_stats = all_stats or stats
                per_seed.append(probs)
            if export_from is not None:
                if setup.scheme.startswith(
                    "kfold"
                ):  # every prompt was a test prompt once: the export sees all
                    final = export_from(list(data.models), int(setup.embeddings.shape[1]), seeds[0])
                    fit_policy(
                        final,
                        setup,
                        setup.final_rows,
                        cfg=cfg,
                        seed=seeds[0] * 1000 + len(setup.plan),
                        progress=bar,
                    )
                else:
                    final = last[main_name]
        train_seconds = time.perf_counter() - t0
        # one comparison over all seeds: AIQ integrates every seed's points up to the same largest cost
        reports = [report_of(p, None) for p in per_seed]
        largest = max(r["max_cost_usd"] for r in reports)
        reports = [
            r if r["max_cost_usd"] == largest else report_of(p, largest)
            for r, p in zip(reports, per_seed, strict=True)
        ]
        report = aggregate_reports(reports, seeds)
        report["comparisons"] = compare_with_rivals(per_seed, fixed, main_name, setup, largest, cfg)
        report.update(
            {
                "policy": main_name,
                "seed": seeds[0],
                "train": {name: _mean_stats(s) for name, s in all_stats.items()},
                "run_id": tracker.run_id,
            }
        )
        chosen = fitted_choices(final)
        if chosen is not None:  # what the exported policy chose from its training prompts, and why
            report["final_policy"] = chosen
            print(f"[router-rl] {main_name}: {describe_choices(chosen)}")
        report_path = out_dir / "report.json"
        report_path.write_text(to_json(report))
        paths = [out_dir / "config.yaml", report_path, plot_frontier(report, out_dir / "pareto.png")]
        curves = {name: s[0]["curve"] for name, s in all_stats.items() if s and "curve" in s[0]}
        if curves:
            title = (
                f"{data.name}: online learning in the simulator (fold 0, cost weight {setup.cost_weight:g})"
            )
            paths.append(plot_learning_curves(curves, out_dir / "learning_curves.png", title=title))

        # eval/ metrics and the plots first: a run keeps its figures whatever the export does
        metrics_out = report_metrics(report)
        metrics_out.update({"perf/embed_seconds": setup.embed_seconds, "perf/train_seconds": train_seconds})
        if chosen is not None:
            metrics_out["final/mlp_weight"] = chosen["mlp_weight"]
            if chosen["mlp_epochs"] is not None:
                metrics_out["final/mlp_epochs"] = chosen["mlp_epochs"]
        tracker.log_metrics(metrics_out)
        for path in paths:
            tracker.log_artifact(path)

        artifact = None
        if final is not None:
            context = {
                "catalog_models": model_entries(data.catalog),
                "embedder": setup.embedder.manifest(int(setup.embeddings.shape[1])),  # + representation
                "cost_scale": setup.cost_scale,
                "cost_weight": setup.cost_weight,
                "latency_weight": setup.latency_weight,
                "dataset": data.name,
                "run_id": tracker.run_id,
                # what `router-rl eval` checks an artifact's test prompts against (TrainedOnWarning)
                "training_prompts": training_prompts_record(
                    data.name, setup.scheme, data.prompts[setup.final_rows]
                ),
            }
            ckpt = write_checkpoint(out_dir / "checkpoint", final, context)
            tracker.log_artifact(ckpt, "checkpoint")
            missing = no_serving_form(final, main_name) if cfg.export.enabled else None
            if missing:
                print(f"[router-rl] export skipped: {missing}")
            elif cfg.export.enabled:
                artifact = export_artifact(final, context, out_dir / cfg.export.dir)
                tracker.log_artifact(artifact, "router_artifact")
                if tracker.run_id and cfg.get("registry", {}).get("name"):
                    from router_rl.registry import register_artifact

                    register_artifact(
                        artifact,
                        cfg.registry.name,
                        run_id=tracker.run_id,
                        tracking_uri=cfg.mlflow.tracking_uri,
                    )

        tracker.log_metrics({"perf/total_seconds": time.perf_counter() - t_start})

    print(summary_table(report))
    print(f"[router-rl] report: {report_path}\n[router-rl] plot: {paths[2]}")
    if artifact is not None:
        print(f"[router-rl] artifact: {artifact}")
    if tracker.run_id:
        print(f"[router-rl] MLflow run {tracker.run_id} ({cfg.mlflow.tracking_uri})")
    print(f"[router-rl] done in {time.perf_counter() - t_start:.1f}s")
    return report


def no_serving_form(policy: Policy, name: str) -> str | None:
    """Why ``policy`` cannot be exported (it has no linear head, or its base has none), else None."""
    head = getattr(policy, "linear_head", None)
    if head is not None:
        try:
            head()
            return None
        except AttributeError as err:
            return f"{name} has no serving form ({err})"
    return (
        f"{name} has no serving form (an artifact holds a linear head); "
        "linucb, lin_ts, sliding_linucb, pacing and zero_router export"
    )


def _fold_logger(tracker: Tracker, fold: int) -> Callable[[dict[str, float], int], None]:
    def log(metrics: dict[str, float], step: int) -> None:
        tracker.log_metrics({f"{k}/fold{fold}": v for k, v in metrics.items()}, step)

    return log


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's figures as namespaced MLflow metrics (``eval/<router>/...``, ``train/<router>/...``)."""
    out: dict[str, float] = {}
    for name, entry in report["policies"].items():
        for key in ("aiq", "aiq_std", "cost_fraction_at_95", "cost_fraction_at_97"):
            if key in entry:
                out[f"eval/{name}/{key}"] = entry[key]
        for p in entry["points"]:
            out[f"eval/{name}/quality/cw_{p['cost_weight']:g}"] = p["quality"]
            out[f"eval/{name}/cost_usd/cw_{p['cost_weight']:g}"] = p["cost_usd"]
    for name, entry in report.get("two_model", {}).get("routers", {}).items():
        out.update({f"eval/{name}/{k}": entry[k] for k in ("apgr", "cpt50", "cpt80")})
    for group, two in report.get("two_model", {}).get("by_group", {}).items():
        for name, entry in two.get("routers", {}).items():
            out.update({f"eval/{name}/{group}/{k}": entry[k] for k in ("apgr", "cpt50", "cpt80")})
    out["eval/zero_router_hull/aiq"] = report["zero_router"]["aiq"]
    out["eval/oracle/quality"] = report["oracle"]["quality"]
    out["eval/oracle/cost_usd"] = report["oracle"]["cost_usd"]
    for name, stats in report.get("train", {}).items():
        out.update({f"train/{name}/{k}": v for k, v in stats.items()})
    return out


# ----------------------------------------------------------------------------------------- train / eval
def fitted_choices(policy: Any) -> dict[str, Any] | None:
    """What a fitted policy chose from its own training rows (``blend`` with ``mlp_weight: auto``: the weight,
    the network's passes with ``stack_epochs``, the out-of-fold scores and test behind them); None otherwise."""
    stacking = getattr(policy, "stacking", None)
    if not stacking:
        return None
    return {
        "mlp_weight": float(policy.mlp_weight),
        "mlp_epochs": getattr(policy, "net_epochs", None),
        "stacking": stacking,
    }


def describe_choices(chosen: dict[str, Any]) -> str:
    """One line for the terminal: the weight and why (see :func:`fitted_choices`)."""
    st, w = chosen["stacking"], chosen["mlp_weight"]
    epochs = "" if chosen["mlp_epochs"] is None else f", {chosen['mlp_epochs']} passes chosen out of fold"
    if st.get("grid") is None:
        why = f"too few rows ({st['rows']}) to hold any out"
    elif st.get("from") is None:
        why = f"the best of the grid out of fold over {st['rows']} rows"
    elif "test" not in st:
        why = f"out of fold over {st['rows']} rows the best was {st['best']:g}, the prior: kept"
    else:
        t = st["test"]
        verdict = "moved" if st["moved"] else f"kept {st['from']:g}"
        why = (
            f"out of fold over {st['rows']} rows the best was {st['best']:g}, its gain over {st['from']:g} "
            f"{t['diff']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}] at {st['level']:g}: {verdict}"
        )
    return f"mlp_weight {w:g} (auto: {why}){epochs}"


def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """``router-rl train``: the configured policy beside the baselines, then export; returns the report."""
    main_name = policy_label(cfg.policy)
    baselines = [b for b in cfg.evaluation.baselines if b != main_name]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"evaluation.baselines: unknown {unknown}; expected some of {sorted(BASELINES)}")

    def main_factory(models: list[str], dim: int, seed: int) -> Policy:
        return make_policy(_with_seed(cfg, seed).policy, models, dim)

    learners: dict[str, PolicyFactory] = {main_name: main_factory}
    for b in baselines:
        learners[b] = lambda models, dim, seed, cls=BASELINES[b]: cls(models=models, dim=dim)
    return run_comparison(
        cfg, output_dir, command="train", learners=learners, main_name=main_name, seeds=[int(cfg.seed)],
        export_from=main_factory,
    )  # fmt: skip


def evaluate(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """``router-rl eval``: several policies (trained per fold) and exported artifacts compared over seeds."""
    learners: dict[str, PolicyFactory] = {}
    for option in cfg.policies:
        params = cfg.get("policy_params", {}).get(str(option))
        label = policy_label(policy_option(str(option), params, root=cfg))

        def factory(
            models: list[str], dim: int, seed: int, option: str = str(option), params=params
        ) -> Policy:
            # resolved per run seed, so a seeded policy (MLP init, TS draws) varies with evaluation.seeds
            return make_policy(policy_option(option, params, root=cfg, seed=seed), models, dim)

        learners[label] = factory
    artifacts = {Path(str(p)).name or str(p): str(p) for p in cfg.get("artifacts", [])}
    if not learners and not artifacts:
        raise ValueError("eval: nothing to compare; set policies=[...] and/or artifacts=[...]")
    seeds = [int(s) for s in cfg.evaluation.seeds] if cfg.evaluation.get("seeds") else [int(cfg.seed)]
    main_name = next(iter(learners), "artifacts")
    return run_comparison(
        cfg,
        output_dir,
        command="eval",
        learners=learners,
        main_name=main_name,
        seeds=seeds,
        artifacts=artifacts,
    )


def policy_option(
    option: str, overrides: Any = None, *, root: DictConfig | None = None, seed: int | None = None
) -> DictConfig:
    """The config of ``configs/policy/<option>.yaml`` (as shipped in the package), with ``overrides``.

    With ``root`` (the job's config) it is attached as ``root.policy`` of a copy, so interpolations such as
    ``${seed}`` resolve against the job's values; ``seed`` replaces the copy's ``seed`` first."""
    from importlib.resources import files

    folder = files("router_rl.configs").joinpath("policy")
    path = folder.joinpath(f"{option}.yaml")
    if not path.is_file():
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ValueError(f"unknown policy {option!r}; expected one of {known}")
    cfg = OmegaConf.create(path.read_text())
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    if root is None:
        return cfg
    holder = OmegaConf.create(OmegaConf.to_container(root, resolve=False))
    if seed is not None:
        holder.seed = int(seed)
    holder.policy = cfg
    return holder.policy


def _with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """``cfg`` with its top-level ``seed`` set to ``seed`` (interpolations follow); ``cfg`` itself unchanged."""
    if "seed" not in cfg or int(cfg.seed) == int(seed):
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    out.seed = int(seed)
    return out


def _mean_stats(stats: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0] if k != "curve"}
