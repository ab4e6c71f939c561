"""``router-rl learn``: continue the deployed linear policy from the decision log, evaluate it off-policy
against the deployed one, and promote it in the MLflow registry only on evidence.

The chain: decision log (:func:`router_rl.serve.decision_log.read_logged_bandit_data`, whichever backend the
URL names) -> contexts (the logged embeddings, else the logged prompts re-embedded with the artifact's own
encoder and representation) -> a ridge continuation of every model's heads -> greedy action probabilities
of the candidate and of the champion (the source artifact) on the newest logged rows, held out of the fit
(``holdout``; a candidate scored on the rows it was fitted to looks better than it is) -> IPS, SNIPS and DR
(:mod:`router_rl.ope`) -> the decision ``candidate lower bound > champion estimate + margin`` (``gate="absolute"``)
or, with ``gate="difference"``, ``lower bound of the paired candidate - champion estimate > margin``
(:func:`router_rl.ope.paired_difference`; reported in ``ope.json["difference"]`` either way).

Continuation. Each model k has heads theta_k^(h) (h in quality, cost / cost_scale, latency) and an inverse
design A_k^{-1} ((d + 1, d + 1), tensor ``a_inv`` of the artifact when present; else the isotropic prior
``A_k = prior_strength * I`` centred on the deployed heads). With the rows X_k (n_k, d + 1) the logs assign
to k and targets y^(h):

    A_k'^{-1} = (A_k + X_k^T X_k)^{-1}                      (Woodbury; Sherman-Morrison for one row)
    theta_k'^(h) = theta_k^(h) + A_k'^{-1} X_k^T (y^(h) - X_k theta_k^(h))

the exact posterior mean of Bayesian ridge regression whose prior is the deployed policy. A row without a
measured cost or latency gets that head's own prediction as target: its design still counts, its mean moves
not. The candidate artifact stores ``a_inv`` so the next ``learn`` continues from it.

A ``linear+mlp`` artifact (the ``blend`` policy) decides on (1 - beta) * linear heads + beta * network; the
network stays as deployed and the linear heads continue as above, as the policy itself learns online. The
candidate keeps the network and beta; both policies' scores in the evaluation are the blended ones.

DR uses the champion's predictions as the reward model: they were fitted before this log, so they do not
overfit the rows they correct (no cross-fitting needed).

Selection-free value (``estimate_split``). The gate promotes the candidates whose held-out estimate ran high,
so an interval computed on the rows that decided over-states a promoted candidate (the winner's curse;
:func:`router_rl.ope.sample_split`). With ``estimate_split = s > 0`` the held-out rows with a reward are split
by a seeded permutation (``split_seed``) into decision rows (1 - s) and estimate rows (s): the gate and
``ope.json["candidate"]``, ``["champion"]`` and ``["difference"]`` use the decision rows only, and
``ope.json["value_estimate"]`` holds the same estimates on the estimate rows, which the decision never saw: the
candidate's value interval to report, and to build prediction intervals from. ``s = 0`` is the behaviour
before the split: every held-out row decides, and ``value_estimate`` repeats the decision's figures with
``selection_free: false``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

A_INV = "a_inv"
ESTIMATORS = ("ips", "snips", "dr")
GATES = ("absolute", "difference")  # promotion rules: see learn()
# share of the held-out rows kept out of the decision for the candidate's reported value: 0.3 keeps the gate's
# interval 1.2x as wide as on every row (0.5: 1.41x, which cost the production loop its gain over the static
# policy; docs/production.md)
ESTIMATE_SPLIT = 0.3
# manifest fields the writer sets itself; every other field of the source manifest is carried over
_WRITER_FIELDS = {
    "format",
    "format_version",
    "policy_kind",
    "models",
    "embedder",
    "default_cost_weight",
    "latency_weight",
    "normalisation",
    "blend",
    "created_at",
    "files",
    "manifest_sha256",
    "manifest_hmac_sha256",
}
ALIAS_HISTORY_TAG = "router_rl.alias_history.{alias}"


class LearnError(ValueError):
    """The log or the artifact cannot support learning (no contexts, no feedback, a foreign catalog)."""


@dataclass
class LearnResult:
    artifact: Path
    ope: dict[str, Any]
    version: Any = None  # the registered ModelVersion with --promote


# ---------------------------------------------------------------------------------------------- pure parts


def ridge_continue(
    theta: np.ndarray, a_inv: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and inverse design of one arm after rows ``x``.

    Args:
        theta: (H, D) heads (bias feature last). a_inv: (D, D). x: (n, D) rows with the bias feature.
        y: (H, n) targets.
    Returns:
        (theta', a_inv'), with theta' = theta + A'^{-1} X^T (y - X theta^T) and A'^{-1} = (A + X^T X)^{-1}.
    """
    from router_rl.policies.ridge import add_rows_to_inverse

    if x.shape[0] == 0:
        return theta.copy(), a_inv.copy()
    new_inv = add_rows_to_inverse(a_inv, x)
    resid = y - theta @ x.T  # (H, n)
    return theta + (new_inv @ (x.T @ resid.T)).T, new_inv


def greedy_probs(scores: np.ndarray) -> np.ndarray:
    """(n, K) probabilities of the greedy policy over finite ``scores`` (n, K): ties share uniformly."""
    best = scores.max(axis=1, keepdims=True)
    ties = np.isfinite(scores) & (scores >= best - 1e-12)
    return ties / ties.sum(axis=1, keepdims=True)


def _scores(
    theta: np.ndarray,
    xb: np.ndarray,
    w: np.ndarray,
    lam: float,
    net: np.ndarray | None = None,
    beta: float = 0.0,
) -> np.ndarray:
    """(n, K) rewards predicted by heads ``theta`` (3, K, D) for rows ``xb`` (n, D) at cost weights ``w`` (n,);
    with ``net`` (3, n, K), a linear+mlp artifact's network estimates, blended as (1 - beta) heads + beta net."""
    est = np.einsum("nd,hkd->hnk", xb, theta)
    if net is not None:
        est = (1.0 - beta) * est + beta * net
    return est[0] - w[:, None] * est[1] - lam * est[2]


# ---------------------------------------------------------------------------------------------- reading


def read_log(url: str, **filters: Any):
    """The decision log at ``url`` (``sqlite:///path``, a plain path, or another backend's URL, handed to the
    log's reader unchanged) as :class:`~router_rl.serve.decision_log.LoggedBanditData`."""
    from router_rl.serve.decision_log import read_logged_bandit_data

    source = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return read_logged_bandit_data(source, **filters)


def contexts_for(data: Any, router_factory: Any) -> tuple[np.ndarray, str]:
    """(n, d) contexts of the logged decisions and where they came from."""
    if data.contexts is not None:
        return np.asarray(data.contexts, dtype=np.float64), "logged embeddings"
    if data.prompts is not None:
        x = router_factory().embed([str(p) for p in data.prompts])
        return np.asarray(x, dtype=np.float64), "logged prompts, re-embedded with the artifact's encoder"
    raise LearnError(
        "the decision log holds neither embeddings nor prompts, so there is no context to learn from; "
        "serve with log_embeddings (or log_prompts) on (ROUTER_RL_LOG_EMBEDDINGS=1) and collect feedback again"
    )


# ---------------------------------------------------------------------------------------------- learn


def learn(
    log_db: str,
    artifact: str | Path,
    out: str | Path,
    *,
    margin: float = 0.0,
    estimator: str = "dr",
    level: float = 0.95,
    prior_strength: float = 1.0,
    holdout: float = 0.3,
    policy_version: str | None = None,
    feedback_source: str = "any",
    gate: str = "absolute",
    estimate_split: float = ESTIMATE_SPLIT,
    split_seed: int = 0,
    promote: str | None = None,
    tracking_uri: str | None = None,
    wheel: str | Path | None = None,
) -> LearnResult:
    """Write ``out/artifact/`` (the continued policy) and ``out/ope.json``; with ``promote`` (``NAME@ALIAS``)
    register the candidate and move the alias only on a positive decision. See the module docstring."""
    from router_rl import ope
    from router_rl.policies.ridge import add_bias
    from router_rl.serve.artifact import load_artifact, mlp_estimates

    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if prior_strength <= 0:
        raise ValueError(f"prior_strength must be > 0, got {prior_strength}")
    if not 0 <= estimate_split < 1:  # NaN fails too
        raise ValueError(
            f"estimate_split (--estimate-split) must be in [0, 1): the share of the held-out rows kept for the "
            f"selection-free value estimate (0: the decision's own rows report it); got {estimate_split!r}"
        )
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise ValueError(f"split_seed (--split-seed) must be a non-negative integer, got {split_seed!r}")
    art = load_artifact(artifact, device="cpu")
    models = art.models
    k, dim = len(models), int(art.manifest["embedder"]["dim"])
    data = read_log(
        log_db, require_feedback=True, policy_version=policy_version, feedback_source=feedback_source
    )
    n_logged = len(data)
    if n_logged == 0:
        which = "" if feedback_source == "any" else f" from source {feedback_source!r}"
        raise LearnError(f"{log_db}: no decisions with feedback{which} to learn from")
    col = np.array([models.index(m) if m in models else -1 for m in data.models])
    act = col[data.action]
    x_all, context_source = contexts_for(data, lambda: _router(art))
    if x_all.shape[1] != dim:
        raise LearnError(
            f"{log_db}: logged contexts have dimension {x_all.shape[1]}, the artifact expects {dim}"
        )
    keep = (act >= 0) & np.isfinite(data.quality)
    xb = add_bias(x_all[keep])
    a = act[keep]
    n = int(keep.sum())
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    # chronological split (the log is oldest first): fit on the past, evaluate on the newest rows, which the
    # candidate has not seen (evaluating on its own training rows overstates it: it learned their noise)
    n_eval = int(round(holdout * n)) if holdout > 0 else n
    if holdout > 0 and (n_eval == 0 or n_eval == n):
        raise LearnError(
            f"{log_db}: {n} usable decisions are too few to hold out {holdout:.0%} for evaluation"
        )
    fit = np.arange(n) < (n - n_eval if holdout > 0 else n)
    held = ~fit if holdout > 0 else fit

    theta0 = np.stack(
        [art.tensors[h].double().numpy() for h in ("theta_quality", "theta_cost", "theta_latency")]
    )
    if A_INV in _raw_tensor_names(art):
        a_inv0, prior = _read_a_inv(art), "the artifact's inverse design matrices"
    else:
        a_inv0 = np.broadcast_to(np.eye(dim + 1) / prior_strength, (k, dim + 1, dim + 1)).copy()
        prior = f"isotropic, A = {prior_strength} * I, centred on the deployed heads"

    # targets: quality, cost / cost_scale, latency; a missing cost or latency is the head's own prediction
    pred0 = np.einsum("nd,hkd->hnk", xb, theta0)[:, np.arange(n), a]  # (3, n)
    scale = data.cost_scale[keep]
    y = np.stack([data.quality[keep], data.cost_usd[keep] / scale, data.latency_s[keep]])
    y = np.where(np.isfinite(y), y, pred0)
    theta1, a_inv1, updates = theta0.copy(), a_inv0.copy(), {}
    for arm in range(k):
        rows = fit & (a == arm)
        theta1[:, arm], a_inv1[arm] = ridge_continue(theta0[:, arm], a_inv0[arm], xb[rows], y[:, rows])
        updates[models[arm]] = int(rows.sum())

    out = Path(out)
    cand_dir = _write_candidate(art, out / "artifact", theta1, a_inv1, log_db=log_db, n_rows=int(fit.sum()))
    candidate = load_artifact(cand_dir, device="cpu")

    # off-policy evaluation on the rows with a reward; the logged exclusions are the allowed set
    lam = float(art.manifest.get("latency_weight", 0.0))
    reward = data.rewards(latency_weight=lam)[keep]
    ev = np.isfinite(reward) & held
    allowed = np.full((n, k), False)
    logged_scores = data.scores[keep]
    for j, c in enumerate(col):
        if c >= 0:
            allowed[:, c] |= np.isfinite(logged_scores[:, j])
    allowed[np.arange(n), a] = True  # the logged action was allowed
    w = data.cost_weight[keep]
    beta = art.mlp_weight
    net = np.asarray(mlp_estimates(art, x_all[keep]), dtype=np.float64) if beta > 0 else None
    champ_scores = _scores(theta0, xb, w, lam, net, beta)
    cand_scores = _scores(theta1, xb, w, lam, net, beta)
    p_champ = greedy_probs(np.where(allowed, champ_scores, -np.inf))[ev]
    p_cand = greedy_probs(np.where(allowed, cand_scores, -np.inf))[ev]
    mu, r, act_ev, q_hat = data.propensity[keep][ev], reward[ev], a[ev], champ_scores[ev]
    if not ev.any():
        raise LearnError(
            f"{log_db}: no decision with feedback has a reward (quality and, for cost weight > 0, cost)"
        )
    # the gate decides on `decide`; the candidate's reported value comes from `hold`, which it never saw
    decide, hold = ope.sample_split(int(ev.sum()), estimate_split, split_seed)
    if estimate_split > 0 and min(decide.size, hold.size) < 2:
        raise LearnError(
            f"{log_db}: {int(ev.sum())} held-out decisions with a reward are too few to split "
            f"{1 - estimate_split:.0%} / {estimate_split:.0%} (--estimate-split {estimate_split}) into decision "
            "and estimate rows of at least 2 each"
        )

    def evidence(rows: np.ndarray) -> tuple[dict[str, Any], dict[str, Any], Any]:
        logged = (r[rows], mu[rows], act_ev[rows])
        cand = ope.estimate_all(*logged, p_cand[rows], q_hat[rows], level=level)
        champ = ope.estimate_all(*logged, p_champ[rows], q_hat[rows], level=level)
        paired = ope.paired_difference(
            *logged, p_cand[rows], p_champ[rows], q_hat[rows], estimator=estimator, level=level
        )
        return cand, champ, paired

    est_cand, est_champ, diff = evidence(decide)
    lower, champ_value = est_cand[estimator].ci_low, est_champ[estimator].value
    if gate == "difference":  # the paired interval: both policies on the same rows, their noise cancels
        promote_ok = bool(diff.ci_low > margin)
        rule = f"lower bound of candidate - champion ({estimator}, paired) > margin"
    else:
        promote_ok = bool(lower > champ_value + margin)
        rule = f"candidate {estimator} lower bound > champion {estimator} estimate + margin"
    ev_ids = np.asarray(data.decision_id)[keep][ev]
    if hold.size:
        try:  # a few rows can fail, e.g. SNIPS where the candidate never takes the logged action
            val_cand, val_champ, val_diff = evidence(hold)
        except ValueError as err:
            raise LearnError(
                f"{log_db}: the {hold.size} estimate rows (--estimate-split {estimate_split}) cannot estimate the "
                f"candidate's value: {err}; log more decisions, or pass --estimate-split 0"
            ) from err
        value_estimate = {
            "selection_free": True,
            "rows": "estimate rows: held out of the fit and of the decision (disjoint from the decision rows)",
            "n": int(hold.size),
        }
    else:
        val_cand, val_champ, val_diff = est_cand, est_champ, diff
        value_estimate = {
            "selection_free": False,
            "rows": "the decision's own rows (estimate_split 0): biased upwards for a promoted candidate",
            "n": int(decide.size),
        }
    value_estimate |= {
        "candidate": {name: e.to_dict() for name, e in val_cand.items()},
        "champion": {name: e.to_dict() for name, e in val_champ.items()},
        "difference": val_diff.to_dict(),
    }
    report = {
        "log_db": log_db,
        "source_artifact": str(Path(artifact)),
        "champion_version": art.version,
        "candidate_version": candidate.version,
        "n_logged": n_logged,
        "n_learned": int(fit.sum()),
        "n_evaluated": int(ev.sum()),
        "holdout": holdout,
        "split": {
            "estimate_split": estimate_split,
            "seed": split_seed,
            "method": "the held-out rows with a reward, in log order, permuted by numpy.random.default_rng(seed); "
            "the first round(estimate_split * n_evaluated) are the estimate rows, the rest decide "
            "(router_rl.ope.sample_split)",
            "n_decision": int(decide.size),
            "n_estimate": int(hold.size),
            "estimate_decision_ids": [str(i) for i in ev_ids[hold]],
        },
        "n_skipped_foreign_model": int((act < 0).sum()),
        "feedback_source": feedback_source,
        "n_by_feedback_source": _count_sources(data.feedback_source),
        "contexts": context_source,
        "prior": prior,
        "updates": updates,
        "level": level,
        "estimator": estimator,
        "margin": margin,
        "reward_model": "champion's predictions (fitted before this log)",
        "candidate": {name: e.to_dict() for name, e in est_cand.items()},
        "champion": {name: e.to_dict() for name, e in est_champ.items()},
        "ess": {"candidate": est_cand["ips"].ess, "champion": est_champ["ips"].ess},
        "agreement": float((p_cand.argmax(axis=1) == p_champ.argmax(axis=1)).mean()),
        "difference": diff.to_dict(),
        "decision": {
            "promote": promote_ok,
            "gate": gate,
            "rule": rule,
            "evidence": "candidate, champion and difference of this report: the decision rows "
            f"({int(decide.size)} of {int(ev.sum())} held out); the candidate's value to report is value_estimate",
            "candidate_lower": lower,
            "champion_estimate": champ_value,
            "difference_lower": diff.ci_low,
        },
        "value_estimate": value_estimate,
    }
    if data.shadow_action is not None:
        everything = read_log(
            log_db, policy_version=policy_version
        )  # agreement: every decision, graded or not
        report["shadow"] = shadow_report(
            data,
            everything,
            col=col,
            keep=keep,
            reward=reward,
            q_hat=champ_scores,
            allowed=allowed,
            level=level,
        )
    (out / "ope.json").write_text(json.dumps(report, indent=2) + "\n")
    result = LearnResult(artifact=cand_dir, ope=report)
    if promote:
        result.version = register_candidate(
            cand_dir, out / "ope.json", report, promote, tracking_uri=tracking_uri, wheel=wheel
        )
    return result


def shadow_report(
    data: Any,
    everything: Any,
    *,
    col: np.ndarray,
    keep: np.ndarray,
    reward: np.ndarray,
    q_hat: np.ndarray,
    allowed: np.ndarray,
    level: float,
) -> dict[str, Any]:
    """What the shadow policy (``serve --shadow``) would have done, from the same log: its agreement with the
    logged (served) decisions over every decision it shadowed, and its IPS, SNIPS and DR value over the graded
    ones. The shadow is evaluated as the deterministic policy of its logged choices (it does not explore);
    none of these rows were used to fit it, so all of them evaluate it (no holdout).

    Args: ``data`` the graded rows as ``learn`` read them, ``everything`` all rows; ``col`` maps the log's
    model index to the artifact's; ``keep`` (n,) the rows ``learn`` kept, ``reward``, ``q_hat`` (champion's
    reward predictions) and ``allowed`` aligned with them."""
    from router_rl import ope

    shadowed = everything.shadow_action >= 0 if everything.shadow_action is not None else np.zeros(0, bool)
    agree = (
        everything.shadow_action[shadowed] == everything.action[shadowed] if shadowed.any() else np.zeros(0)
    )
    versions = sorted({str(v) for v in everything.shadow_policy_version[shadowed]}) if shadowed.any() else []
    out: dict[str, Any] = {
        "policy_versions": versions,
        "n_shadowed": int(shadowed.sum()),
        "agreement": float(agree.mean()) if agree.size else None,
    }
    s_log = data.shadow_action[keep]
    s_act = np.where(s_log >= 0, col[np.maximum(s_log, 0)], -1)  # the artifact's index, -1: none or foreign
    a = col[data.action[keep]]
    rows = (s_act >= 0) & np.isfinite(reward)
    rows &= allowed[np.arange(len(s_act)), np.maximum(s_act, 0)]
    out["n_evaluated"] = int(rows.sum())
    if rows.any():
        p = np.zeros((int(rows.sum()), q_hat.shape[1]))
        p[np.arange(p.shape[0]), s_act[rows]] = 1.0
        try:
            est = ope.estimate_all(
                reward[rows], data.propensity[keep][rows], a[rows], p, q_hat[rows], level=level
            )
        except ValueError as err:  # e.g. the shadow never chose what was served: no support in this log
            out["estimates"], out["error"] = None, str(err)
        else:
            out["estimates"] = {name: e.to_dict() for name, e in est.items()}
            out["ess"] = est["ips"].ess
    return out


def _count_sources(sources: np.ndarray | None) -> dict[str, int]:
    """Rows per feedback source (``client``, ``judge``) among the rows read."""
    if sources is None:
        return {}
    names, counts = np.unique(np.asarray(sources, dtype=str), return_counts=True)
    return {str(k): int(c) for k, c in zip(names, counts, strict=True) if k}


def _router(art: Any) -> Any:
    from router_rl.serve.router import Router

    return Router(art, device="cpu")


def _raw_tensor_names(art: Any) -> list[str]:
    from safetensors import safe_open

    from router_rl.serve.artifact import WEIGHTS

    with safe_open(str(art.path / WEIGHTS), framework="np") as f:
        return list(f.keys())


def _read_a_inv(art: Any) -> np.ndarray:
    from safetensors import safe_open

    from router_rl.serve.artifact import WEIGHTS

    with safe_open(str(art.path / WEIGHTS), framework="np") as f:
        a_inv = np.asarray(f.get_tensor(A_INV), dtype=np.float64)
    k, d = len(art.models), int(art.manifest["embedder"]["dim"]) + 1
    if a_inv.shape != (k, d, d) or not np.isfinite(a_inv).all():
        raise LearnError(
            f"{art.path}: tensor {A_INV!r} has shape {a_inv.shape} or non-finite values; expected {(k, d, d)}"
        )
    return 0.5 * (a_inv + a_inv.transpose(0, 2, 1))


def _write_candidate(
    art: Any, out: Path, theta: np.ndarray, a_inv: np.ndarray, *, log_db: str, n_rows: int
) -> Path:
    """The candidate artifact: the source's catalog, embedder block (representation included), encoder files
    and other manifest fields, with the continued heads and their inverse designs."""
    from router_rl.serve.artifact import MANIFEST, WEIGHTS, write_linear_artifact

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    extra_files = [name for name in art.manifest["files"] if name not in (WEIGHTS, MANIFEST)]
    for name in extra_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(art.path / name, out / name)
    extra = {key: v for key, v in art.manifest.items() if key not in _WRITER_FIELDS}
    extra["learned_from"] = {"policy_version": art.version, "log_db": log_db, "n_rows": n_rows}
    m = art.manifest
    mlp = None
    if art.mlp_weight > 0:  # a linear+mlp source: the candidate keeps its network as deployed
        mlp = {
            name: t.detach().float().cpu().numpy()
            for name, t in art.tensors.items()
            if name.startswith("mlp.")
        }
    return write_linear_artifact(
        out,
        models=m["models"],
        tensors={
            "theta_quality": theta[0],
            "theta_cost": theta[1],
            "theta_latency": theta[2],
            A_INV: a_inv,
        },
        embedder=m["embedder"],
        cost_scale=art.cost_scale,
        default_cost_weight=float(m.get("default_cost_weight", 0.0)),
        latency_weight=float(m.get("latency_weight", 0.0)),
        extra=extra,
        extra_files=extra_files,
        mlp=mlp,
        mlp_weight=art.mlp_weight,
    )


# ---------------------------------------------------------------------------------------------- registry


def _client(tracking_uri: str | None) -> Any:
    import os

    from router_rl.registry import _require_mlflow

    _require_mlflow("the MLflow registry")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def parse_target(target: str) -> tuple[str, str]:
    name, sep, alias = target.partition("@")
    if not sep or not name or not alias:
        raise ValueError(f"--promote expects NAME@ALIAS, got {target!r}")
    return name, alias


def register_candidate(
    artifact_dir: Path,
    ope_path: Path,
    report: dict[str, Any],
    target: str,
    *,
    tracking_uri: str | None = None,
    wheel: str | Path | None = None,
) -> Any:
    """Register the candidate as a new version of NAME with the evidence (``ope.json`` in its run, the
    estimates as version tags) and move ALIAS to it only when ``report['decision']['promote']``."""
    import os

    import mlflow

    from router_rl.registry import register_artifact

    name, alias = parse_target(target)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    mlflow.set_tracking_uri(uri)
    est = report["estimator"]
    decision = report["decision"]
    tags = {
        "router_rl.ope.estimator": est,
        "router_rl.ope.candidate": f"{report['candidate'][est]['value']:.6g}",
        "router_rl.ope.candidate_ci_low": f"{report['candidate'][est]['ci_low']:.6g}",
        "router_rl.ope.champion": f"{report['champion'][est]['value']:.6g}",
        "router_rl.ope.margin": f"{report['margin']:.6g}",
        "router_rl.ope.n": str(report["n_evaluated"]),
        "router_rl.ope.ess": f"{report['ess']['candidate']:.6g}",
        "router_rl.champion_version": report["champion_version"],
        "router_rl.promoted": str(decision["promote"]).lower(),
    }
    value = report.get("value_estimate")
    if value is not None:  # the candidate's selection-free value (the decision's own with estimate_split 0)
        tags |= {
            "router_rl.ope.value": f"{value['candidate'][est]['value']:.6g}",
            "router_rl.ope.value_ci_low": f"{value['candidate'][est]['ci_low']:.6g}",
            "router_rl.ope.value_ci_high": f"{value['candidate'][est]['ci_high']:.6g}",
            "router_rl.ope.value_selection_free": str(value["selection_free"]).lower(),
        }
    with mlflow.start_run(run_name=f"learn-{name}"):
        mlflow.log_artifact(str(ope_path))
        for who in ("candidate", "champion"):
            for e, v in report[who].items():
                mlflow.log_metric(f"ope/{who}_{e}", v["value"])
            for e, v in (value or {}).get(who, {}).items():
                mlflow.log_metric(f"ope/value_{who}_{e}", v["value"])
        version = register_artifact(artifact_dir, name, tracking_uri=uri, tags=tags, wheel=wheel)
    if decision["promote"]:
        move_alias(name, str(version.version), alias, tracking_uri=uri)
    return version


def _history(client: Any, name: str, alias: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(ALIAS_HISTORY_TAG.format(alias=alias), "[]"))


def move_alias(name: str, version: str, alias: str, *, tracking_uri: str | None = None) -> str | None:
    """Point ``alias`` of ``name`` at ``version``, remembering where it pointed (for :func:`rollback`).
    Returns the previous version, or None."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    client.get_model_version(name, str(version))  # an unknown version fails here, alias untouched
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    history = _history(client, name, alias)
    if previous is not None and str(previous) != str(version):
        history.append(str(previous))
    client.set_registered_model_tag(name, ALIAS_HISTORY_TAG.format(alias=alias), json.dumps(history))
    client.set_registered_model_alias(name, alias, str(version))
    return None if previous is None else str(previous)


def rollback(name: str, alias: str, *, tracking_uri: str | None = None) -> str:
    """Point ``alias`` back at the version it held before the last move; returns that version."""
    client = _client(tracking_uri)
    history = _history(client, name, alias)
    if not history:
        raise LearnError(f"{name}@{alias}: no earlier version to roll back to")
    version = history.pop()
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, ALIAS_HISTORY_TAG.format(alias=alias), json.dumps(history))
    return version


# ---------------------------------------------------------------------------------------------- commands


def _fail(err: BaseException) -> int:
    print(f"router-rl: error: {err}", file=sys.stderr)
    return 2


def main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="router-rl learn",
        description="Continue the deployed linear policy from the decision log's feedback, write DIR/artifact "
        "and DIR/ope.json (IPS, SNIPS, DR of candidate and champion), optionally promote on evidence.",
    )
    parser.add_argument(
        "--log-db", required=True, help="the decision log: sqlite:///path, a path, or a database URL"
    )
    parser.add_argument("--artifact", required=True, help="the deployed (champion) artifact directory")
    parser.add_argument("--out", required=True, help="output directory (artifact/ and ope.json)")
    parser.add_argument(
        "--promote", default=None, help="NAME@ALIAS: register, move ALIAS only on a positive decision"
    )
    parser.add_argument(
        "--margin", type=float, default=0.0, help="required lead of the candidate's lower bound"
    )
    parser.add_argument("--estimator", choices=ESTIMATORS, default="dr", help="estimator of the decision")
    parser.add_argument(
        "--gate",
        choices=GATES,
        default="absolute",
        help="absolute: candidate's lower bound > champion's estimate + margin; difference: the lower bound of "
        "the paired candidate - champion estimate > margin (both on the same rows: far narrower)",
    )
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--prior-strength", type=float, default=1.0, help="prior precision without a_inv")
    parser.add_argument(
        "--holdout", type=float, default=0.3, help="newest share of the log kept out of fitting, for the OPE"
    )
    parser.add_argument(
        "--estimate-split",
        type=float,
        default=ESTIMATE_SPLIT,
        help="share of the held-out rows kept out of the decision for the candidate's selection-free value "
        "estimate (ope.json value_estimate); the gate decides on the rest (0: every held-out row decides and "
        "reports, as before the split)",
    )
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the decision / estimate split of the held-out rows"
    )
    parser.add_argument(
        "--policy-version", default=None, help="learn only from this policy version's decisions"
    )
    parser.add_argument(
        "--feedback-source",
        choices=("any", "judge", "client", "pairwise"),
        default="any",
        help="whose grades to learn from: any (a client's grade where a client gave one, else the judge's), "
        "judge, client, or pairwise (win rates against the reference model)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite)"
    )
    parser.add_argument(
        "--wheel", default=None, help="router-rl wheel to log with the model (default: built)"
    )
    opts = parser.parse_args(args)
    from router_rl.serve.artifact import ArtifactError

    try:
        result = learn(
            opts.log_db,
            opts.artifact,
            opts.out,
            margin=opts.margin,
            gate=opts.gate,
            estimator=opts.estimator,
            level=opts.level,
            prior_strength=opts.prior_strength,
            holdout=opts.holdout,
            estimate_split=opts.estimate_split,
            split_seed=opts.split_seed,
            policy_version=opts.policy_version,
            feedback_source=opts.feedback_source,
            promote=opts.promote,
            tracking_uri=opts.tracking_uri,
            wheel=opts.wheel,
        )
    except (ArtifactError, FileNotFoundError, ValueError) as err:
        return _fail(err)
    rep = result.ope
    est = rep["estimator"]
    value = rep["value_estimate"]
    print(
        f"{rep['n_learned']} decisions learned ({rep['contexts']}); {est} on {rep['split']['n_decision']} decision "
        f"rows: candidate {rep['candidate'][est]['value']:.4f} [{rep['candidate'][est]['ci_low']:.4f}, "
        f"{rep['candidate'][est]['ci_high']:.4f}] vs champion {rep['champion'][est]['value']:.4f}; "
        f"promote: {rep['decision']['promote']}; candidate value"
        + (f" on {value['n']} selection-free rows" if value["selection_free"] else " (not selection-free)")
        + f": {value['candidate'][est]['value']:.4f} [{value['candidate'][est]['ci_low']:.4f}, "
        f"{value['candidate'][est]['ci_high']:.4f}] -> {result.artifact}"
        + (f" (registered version {result.version.version})" if result.version is not None else "")
    )
    return 0


def promote_main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="router-rl promote", description="Point a registry alias at a version."
    )
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("alias")
    parser.add_argument("--tracking-uri", default=None)
    opts = parser.parse_args(args)
    from mlflow.exceptions import MlflowException

    try:
        previous = move_alias(opts.name, opts.version, opts.alias, tracking_uri=opts.tracking_uri)
    except MlflowException as err:
        return _fail(err.message)
    print(f"{opts.name}@{opts.alias}: {previous} -> {opts.version}")
    return 0


def rollback_main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="router-rl rollback", description="Point a registry alias back at its previous version."
    )
    parser.add_argument("name")
    parser.add_argument("alias")
    parser.add_argument("--tracking-uri", default=None)
    opts = parser.parse_args(args)
    from mlflow.exceptions import MlflowException

    try:
        version = rollback(opts.name, opts.alias, tracking_uri=opts.tracking_uri)
    except (LearnError, MlflowException) as err:
        return _fail(getattr(err, "message", err))
    print(f"{opts.name}@{opts.alias} -> {version}")
    return 0
