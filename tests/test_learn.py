"""``router-rl learn``: a ridge continuation of the deployed policy from the decision log, off-policy evaluation
of candidate and champion against a known ground truth, and promotion gated by margin in a sqlite MLflow
registry."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from router_rl.learn import LearnError, learn, move_alias, read_log, ridge_continue, rollback
from router_rl.serve.artifact import load_artifact
from router_rl.serve.decision_log import DecisionLog
from router_rl.serve.testing import toy_artifact

MODELS = ["big", "mid", "small"]
DEPLOYED_QUALITY = [0.6, 0.7, 0.5]  # the deployed policy believes mid is best
TRUE_QUALITY = np.array([0.9, 0.6, 0.4])  # but big is
COST = [0.01, 0.002, 0.0001]
EPSILON = 0.3  # logging policy: epsilon-uniform around the deployed greedy choice (mid)
DIM = 384


def champion(tmp_path: Path, dim: int = DIM) -> Path:
    return toy_artifact(
        tmp_path / "champion", MODELS, quality=DEPLOYED_QUALITY, cost_usd=COST, cost_weight=0.0, dim=dim
    )


def true_value(artifact: Path, x: np.ndarray) -> float:
    """The true mean quality of ``artifact``'s greedy choices (cost weight 0) on contexts ``x``."""
    theta = load_artifact(artifact, device="cpu").tensors["theta_quality"].double().numpy()
    q = np.concatenate([x, np.ones((len(x), 1))], axis=1) @ theta.T
    return float(TRUE_QUALITY[q.argmax(axis=1)].mean())


def write_log(
    path: Path, n: int, seed: int, *, embeddings: bool = True, prompts: bool = False, dim: int = DIM
) -> tuple[Path, np.ndarray]:
    """A decision log of ``n`` epsilon-greedy decisions with Bernoulli(TRUE_QUALITY) feedback; returns the
    path and the logged contexts (n, DIM)."""
    rng = np.random.default_rng(seed)
    log = DecisionLog(path)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs = np.full(3, EPSILON / 3)
    probs[1] += 1 - EPSILON
    for i in range(n):
        a = int(rng.choice(3, p=probs))
        did = uuid.UUID(int=int(rng.integers(2**63)) * 2 + i).hex
        log.log_decision(
            {
                "decision_id": did,
                "ts": 1000.0 + i,
                "endpoint": "route",
                "policy_version": "v0",
                "models": json.dumps(MODELS),
                "action": a,
                "model": MODELS[a],
                "propensity": float(probs[a]),
                "scores": json.dumps(DEPLOYED_QUALITY),
                "pred_quality": json.dumps(DEPLOYED_QUALITY),
                "pred_cost_usd": json.dumps(COST),
                "cost_weight": 0.0,
                "cost_scale": max(COST),
                "limits": "{}",
                "prompt_sha256": f"{i:064x}",
                "prompt": f"prompt number {i}" if prompts else None,
                "embedding": x[i].tobytes() if embeddings else None,
                "api_key": None,
            }
        )
        log.add_feedback(did, float(rng.random() < TRUE_QUALITY[a]), cost_usd=COST[a], latency_s=1.0)
    log.close()
    return path, x


def test_ridge_continue_equals_the_batch_posterior() -> None:
    """Woodbury continuation from prior (theta0, A0) == solving (A0 + X^T X) theta = A0 theta0 + X^T y."""
    rng = np.random.default_rng(0)
    d, n = 5, 7
    a0 = np.eye(d) * 2.0 + 0.1
    theta0 = rng.standard_normal((2, d))
    x, y = rng.standard_normal((n, d)), rng.standard_normal((2, n))
    theta, a_inv = ridge_continue(theta0, np.linalg.inv(a0), x, y)
    a1 = a0 + x.T @ x
    np.testing.assert_allclose(a_inv, np.linalg.inv(a1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theta, np.linalg.solve(a1, (a0 @ theta0.T + x.T @ y.T)).T, rtol=1e-10)


def test_learn_moves_toward_the_truth_and_ope_covers_it(tmp_path: Path) -> None:
    art = champion(tmp_path)
    log, x_log = write_log(tmp_path / "log.db", 1500, seed=1)
    result = learn(f"sqlite:///{log}", art, tmp_path / "out", margin=0.05)
    cand = load_artifact(result.artifact, device="cpu")
    assert cand.models == MODELS
    assert cand.manifest["embedder"] == load_artifact(art, device="cpu").manifest["embedder"]
    # on fresh contexts the candidate's quality estimates moved from the deployed ones toward the truth
    rng = np.random.default_rng(99)
    x = rng.standard_normal((200, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xb = np.concatenate([x, np.ones((200, 1))], axis=1)
    q = xb @ cand.tensors["theta_quality"].double().numpy().T
    err_before = np.abs(np.array(DEPLOYED_QUALITY) - TRUE_QUALITY)
    err_after = np.abs(q.mean(axis=0) - TRUE_QUALITY)
    assert (err_after < 0.5 * err_before).all(), (err_before, err_after)
    assert (q.argmax(axis=1) == 0).mean() > 0.8  # the candidate now routes to big (the deployed one never)
    held_out = x_log[-450:]  # the newest 30% are evaluated, the rest fitted
    truth = {"candidate": true_value(result.artifact, held_out), "champion": 0.6}
    assert truth["candidate"] > 0.85

    rep = json.loads((tmp_path / "out" / "ope.json").read_text())
    assert (rep["n_learned"], rep["n_evaluated"]) == (1050, 450)
    assert rep["contexts"] == "logged embeddings"
    assert rep["updates"]["mid"] > rep["updates"]["big"] > 0
    for est in ("ips", "snips", "dr"):
        for who in ("candidate", "champion"):
            e = rep[who][est]
            assert e["ci_low"] <= truth[who] <= e["ci_high"], (est, who, e, truth)
    assert 0 < rep["ess"]["candidate"] < rep["ess"]["champion"] <= 450
    assert rep["decision"]["promote"] is True and rep["decision"]["gate"] == "absolute"
    d = rep["difference"]  # paired: the same rows, so narrower than the two intervals together
    assert d["ci_low"] <= truth["candidate"] - truth["champion"] <= d["ci_high"]
    width = sum(rep[who]["dr"]["ci_high"] - rep[who]["dr"]["ci_low"] for who in ("candidate", "champion"))
    assert d["ci_high"] - d["ci_low"] < width
    paired = learn(f"sqlite:///{log}", art, tmp_path / "out-paired", margin=0.05, gate="difference")
    assert paired.ope["decision"]["promote"] is (d["ci_low"] > 0.05)
    assert paired.ope["decision"]["difference_lower"] == d["ci_low"]
    with pytest.raises(ValueError, match="gate must be one of"):
        learn(f"sqlite:///{log}", art, tmp_path / "out-bad", gate="vibes")
    # the candidate stores its inverse designs, so a second learn continues from them
    again = learn(str(log), result.artifact, tmp_path / "out2")
    assert again.ope["prior"] == "the artifact's inverse design matrices"


def test_ope_intervals_cover_the_truth_over_seeds(tmp_path: Path) -> None:
    """A statistical check: over 20 logs of 1,000 decisions (300 held out, all of them evaluating:
    ``estimate_split=0``; candidate ESS ~30), the 95% IPS, SNIPS and DR intervals of both policies cover the true
    value (of the candidate each log produced) at least 17 times; binomial(20, 0.95) falls below 17 with
    probability ~1.6%, and the seeds are fixed. (With 120 held-out rows, ESS ~12, SNIPS covered the candidate
    only 8 times in 20: its delta-method interval collapses when the few weighted rewards agree; with the
    default split's 150 decision rows, 14 times.)"""
    art = champion(tmp_path, dim=16)
    hits = dict.fromkeys([(w, e) for w in ("candidate", "champion") for e in ("ips", "snips", "dr")], 0)
    for seed in range(20):
        log, x = write_log(tmp_path / f"log{seed}.db", 1000, seed=100 + seed, dim=16)
        result = learn(str(log), art, tmp_path / f"out{seed}", estimate_split=0)
        rep = result.ope
        for who, truth in (("candidate", true_value(result.artifact, x[-300:])), ("champion", 0.6)):
            for est in ("ips", "snips", "dr"):
                e = rep[who][est]
                hits[who, est] += e["ci_low"] <= truth <= e["ci_high"]
    assert min(hits.values()) >= 17, hits


def _flip_feedback(src: Path, dst: Path, ids: list[str]) -> Path:
    """A copy of the log at ``src`` whose decisions ``ids`` carry the opposite client grade (1 - quality)."""
    shutil.copy(src, dst)
    data = read_log(str(dst), require_feedback=True)
    row = {str(did): i for i, did in enumerate(data.decision_id)}
    log = DecisionLog(dst)
    for did in ids:
        i = row[did]
        log.add_feedback(did, 1.0 - data.quality[i], cost_usd=data.cost_usd[i], latency_s=data.latency_s[i])
    log.close()
    return dst


def _decided_on(rep: dict) -> dict:
    return {key: rep[key] for key in ("candidate", "champion", "difference", "decision")}


def test_estimate_split_keeps_the_decision_blind_to_the_estimate_rows(tmp_path: Path) -> None:
    """With ``estimate_split=0.5`` the gate and the reported estimate use disjoint halves of the held-out rows:
    changing the grades of the estimate rows changes the selection-free value and nothing the decision used;
    changing the decision rows' grades changes the decision's figures and not the value. With
    ``estimate_split=0`` (the behaviour before the split) every held-out row is the decision's."""
    art = champion(tmp_path, dim=16)
    log, _ = write_log(tmp_path / "log.db", 1500, seed=1, dim=16)
    rep = learn(str(log), art, tmp_path / "out", margin=0.05, estimate_split=0.5).ope
    split = rep["split"]
    assert (rep["n_evaluated"], split["n_decision"], split["n_estimate"]) == (450, 225, 225)
    assert (split["estimate_split"], split["seed"]) == (0.5, 0)
    held_ids = [str(i) for i in read_log(str(log), require_feedback=True).decision_id[-450:]]
    estimate_ids = split["estimate_decision_ids"]
    decision_ids = sorted(set(held_ids) - set(estimate_ids))
    assert len(set(estimate_ids)) == 225 and set(estimate_ids) < set(held_ids) and len(decision_ids) == 225
    value = rep["value_estimate"]
    assert value["selection_free"] is True and value["n"] == 225
    for who in ("candidate", "champion"):
        assert rep[who]["dr"]["n"] == value[who]["dr"]["n"] == 225
    assert rep["decision"]["evidence"].startswith("candidate, champion and difference of this report")

    flipped_est = _flip_feedback(log, tmp_path / "flip-est.db", estimate_ids)
    again = learn(str(flipped_est), art, tmp_path / "again", margin=0.05, estimate_split=0.5).ope
    assert again["split"]["estimate_decision_ids"] == estimate_ids  # the same seeded split
    assert _decided_on(again) == _decided_on(rep)  # the decision never saw the estimate rows
    assert again["value_estimate"]["candidate"]["dr"]["value"] != value["candidate"]["dr"]["value"]
    flipped_dec = _flip_feedback(log, tmp_path / "flip-dec.db", decision_ids)
    other = learn(str(flipped_dec), art, tmp_path / "other", margin=0.05, estimate_split=0.5).ope
    assert other["value_estimate"] == value  # the value never saw the decision rows
    assert other["candidate"]["dr"]["value"] != rep["candidate"]["dr"]["value"]

    # estimate_split 0: the decision's own rows report the value, as before the split
    same = [learn(str(p), art, tmp_path / f"s0-{p.stem}", estimate_split=0).ope for p in (log, flipped_est)]
    assert same[0]["split"]["n_decision"] == 450 and same[0]["split"]["estimate_decision_ids"] == []
    assert same[0]["value_estimate"]["selection_free"] is False
    assert same[0]["value_estimate"]["candidate"] == same[0]["candidate"]
    assert same[0]["candidate"]["dr"]["n"] == 450
    assert same[1]["candidate"]["dr"]["value"] != same[0]["candidate"]["dr"]["value"]  # it saw them all


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimate_split": -0.1}, r"estimate_split \(--estimate-split\) must be in \[0, 1\).*-0\.1"),
        ({"estimate_split": 1.0}, r"estimate_split \(--estimate-split\) must be in \[0, 1\).*1\.0"),
        ({"estimate_split": float("nan")}, r"estimate_split \(--estimate-split\) must be in \[0, 1\).*nan"),
        ({"split_seed": -1}, r"split_seed \(--split-seed\) must be a non-negative integer, got -1"),
        ({"split_seed": 1.5}, r"split_seed \(--split-seed\) must be a non-negative integer, got 1\.5"),
    ],
)
def test_learn_rejects_bad_split_options(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        learn(str(tmp_path / "log.db"), tmp_path / "artifact", tmp_path / "out", **kwargs)


def test_learn_split_errors_name_the_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from router_rl.cli import main

    art = champion(tmp_path, dim=16)
    log, _ = write_log(tmp_path / "log.db", 300, seed=3, dim=16)
    args = ["learn", "--log-db", str(log), "--artifact", str(art), "--out", str(tmp_path / "o")]
    assert main([*args, "--estimate-split", "1.5"]) == 2
    assert "estimate_split (--estimate-split) must be in [0, 1)" in capsys.readouterr().err
    tiny, _ = write_log(tmp_path / "tiny.db", 10, seed=3, dim=16)  # 3 held out: 2 decision rows, 1 estimate
    with pytest.raises(LearnError, match=r"too few to split 70% / 30% \(--estimate-split 0.3\)"):
        learn(str(tiny), art, tmp_path / "tiny")
    big, _ = write_log(tmp_path / "big.db", 1500, seed=1, dim=16)  # 2 estimate rows, neither logged on big
    with pytest.raises(LearnError, match=r"the 2 estimate rows \(--estimate-split 0.005\) cannot estimate"):
        learn(str(big), art, tmp_path / "few", estimate_split=0.005)
    assert main([*args, "--estimate-split", "0.4", "--split-seed", "7"]) == 0
    rep = json.loads((tmp_path / "o" / "ope.json").read_text())
    assert rep["split"]["seed"] == 7 and rep["split"]["n_estimate"] == round(0.4 * rep["n_evaluated"])
    assert "selection-free rows" in capsys.readouterr().out


def test_learn_without_contexts_says_what_to_turn_on(tmp_path: Path) -> None:
    art = champion(tmp_path)
    log, _ = write_log(tmp_path / "log.db", 20, seed=2, embeddings=False)
    with pytest.raises(LearnError, match="neither embeddings nor prompts"):
        learn(str(log), art, tmp_path / "out")


def test_learn_re_embeds_logged_prompts(tmp_path: Path) -> None:
    """Without logged embeddings the logged prompts are embedded with the artifact's own encoder."""
    from router_rl.serve.router import Router
    from router_rl.serve.testing import shared_embedder

    art = champion(tmp_path)
    log, _ = write_log(tmp_path / "log.db", 40, seed=4, embeddings=False, prompts=True)
    rep = learn(str(log), art, tmp_path / "out", estimate_split=0).ope  # 12 held-out rows: too few to split
    assert rep["contexts"].startswith("logged prompts, re-embedded")
    assert rep["n_learned"] == 28
    # the fit saw the encoder's embeddings: continuing by hand from them gives the same quality heads
    data = read_log(str(log), require_feedback=True)
    x = Router(art, device="cpu", embedder=shared_embedder()).embed([str(p) for p in data.prompts[:28]])
    xb = np.concatenate([x, np.ones((28, 1))], axis=1)
    theta0 = load_artifact(art, device="cpu").tensors["theta_quality"].double().numpy()
    theta1 = (
        load_artifact(tmp_path / "out" / "artifact", device="cpu").tensors["theta_quality"].double().numpy()
    )
    for arm in range(3):
        rows = data.action[:28] == arm
        want, _ = ridge_continue(
            theta0[arm : arm + 1], np.eye(DIM + 1), xb[rows], data.quality[:28][None, rows]
        )
        np.testing.assert_allclose(theta1[arm], want[0], atol=1e-5)
    assert not np.allclose(theta1, theta0, atol=1e-3)


def test_learn_cli_exit_status(tmp_path: Path) -> None:
    from router_rl.cli import main

    art = champion(tmp_path)
    log, _ = write_log(tmp_path / "log.db", 300, seed=3)
    assert main(["learn", "--log-db", str(log), "--artifact", str(art), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "ope.json").is_file()
    status = main(["learn", "--log-db", str(tmp_path / "nope.db"), "--artifact", str(art), "--out", "x"])
    assert status == 2


def test_learn_from_one_feedback_source(tmp_path: Path) -> None:
    """Clients' grades say big is best (TRUE_QUALITY); a miscalibrated judge says small is: --feedback-source
    picks whose grades the candidate learns from, and ``any`` takes the client's grade where both exist."""
    from router_rl.cli import main

    art = champion(tmp_path, dim=16)
    log, _ = write_log(tmp_path / "log.db", 1500, seed=5, dim=16)
    data = read_log(str(log))
    judge = DecisionLog(log, replica="judge")
    for did, a in zip(data.decision_id, data.action, strict=True):
        judge.add_feedback(str(did), 1.0 if MODELS[a] == "small" else 0.0, source="judge")
    judge.close()
    by = {}
    for source in ("client", "judge", "any"):
        result = learn(str(log), art, tmp_path / source, feedback_source=source)
        theta = load_artifact(result.artifact, device="cpu").tensors["theta_quality"].double().numpy()
        by[source] = (result.ope, theta[:, -1])  # the bias terms: the mean quality learned per model
    assert by["client"][0]["n_by_feedback_source"] == {"client": 1500}
    assert by["judge"][0]["n_by_feedback_source"] == {"judge": 1500}
    assert by["any"][0]["n_by_feedback_source"] == {"client": 1500}  # the clients' grades win
    assert by["client"][1].argmax() == MODELS.index("big")
    assert by["judge"][1].argmax() == MODELS.index("small")
    np.testing.assert_allclose(by["any"][1], by["client"][1])
    assert by["judge"][0]["feedback_source"] == "judge"
    args = ["learn", "--log-db", str(log), "--artifact", str(art), "--out", str(tmp_path / "cli")]
    assert main([*args, "--feedback-source", "judge"]) == 0
    rep = json.loads((tmp_path / "cli" / "ope.json").read_text())
    assert rep["n_by_feedback_source"] == {"judge": 1500}
    with pytest.raises(SystemExit) as info:
        main([*args, "--feedback-source", "human"])
    assert info.value.code == 2


@pytest.fixture
def registry(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wheel = tmp_path / "router_rl-0.0.0-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel: the registry only stores it")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # ./mlruns goes into the temporary directory
    try:
        yield {"uri": uri, "wheel": wheel}
    finally:
        os.chdir(cwd)


def test_promotion_by_margin_and_rollback(tmp_path: Path, registry: dict) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    art = champion(tmp_path)
    log, _ = write_log(tmp_path / "log.db", 1500, seed=1)
    kw = {"promote": "router@champion", "tracking_uri": registry["uri"], "wheel": registry["wheel"]}
    client = MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])

    # a margin the candidate cannot clear: registered with its evidence, the alias stays unset
    no = learn(str(log), art, tmp_path / "no", margin=0.5, **kw)
    assert no.ope["decision"]["promote"] is False
    v1 = client.get_model_version("router", no.version.version)
    assert v1.tags["router_rl.promoted"] == "false"
    assert float(v1.tags["router_rl.ope.champion"]) == pytest.approx(
        no.ope["champion"]["dr"]["value"], rel=1e-5
    )
    assert float(v1.tags["router_rl.ope.value"]) == pytest.approx(
        no.ope["value_estimate"]["candidate"]["dr"]["value"], rel=1e-5
    )
    assert v1.tags["router_rl.ope.value_selection_free"] == "true"
    assert "ope.json" in [f.path for f in client.list_artifacts(v1.run_id)]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("router", "champion")

    # a small margin: promoted
    yes = learn(str(log), art, tmp_path / "yes", margin=0.05, **kw)
    assert yes.ope["decision"]["promote"] is True
    assert str(client.get_model_version_by_alias("router", "champion").version) == str(yes.version.version)

    # by hand: promote the first version, then roll back to the promoted one
    v_no, v_yes = str(no.version.version), str(yes.version.version)
    assert move_alias("router", v_no, "champion", tracking_uri=registry["uri"]) == v_yes
    assert str(client.get_model_version_by_alias("router", "champion").version) == v_no
    assert rollback("router", "champion", tracking_uri=registry["uri"]) == v_yes
    assert str(client.get_model_version_by_alias("router", "champion").version) == v_yes
    with pytest.raises(LearnError, match="no earlier version"):
        rollback("router", "champion", tracking_uri=registry["uri"])
