"""Training and evaluation plumbing of the comparison: the cost weights bandits explore at, the task column,
and the warning for an artifact scored on its own training prompts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_envs import make_data

from router_rl.evaluation import TrainedOnWarning, training_prompts_record, warn_if_trained_on
from router_rl.policies.linucb import LinUCB
from router_rl.training import explore_weights, learn, task_labels


def frontier_problem() -> tuple:
    """'large' is the only good model where x_0 > 0 (0.95 vs 0.5) and costs 50x 'small'."""
    data, emb = make_data(200, 0)
    data.quality = np.stack([np.full(200, 0.5), np.full(200, 0.55), np.where(emb[:, 0] > 0, 0.95, 0.3)], 1)
    data.cost_usd = np.tile([0.001, 0.01, 0.05], (200, 1))
    return data, emb


def test_bandits_learn_the_frontier_when_the_cost_weight_is_drawn_from_the_sweep() -> None:
    """At the training weight 5 'large' is never worth its price: LinUCB tries it 13 times and at w = 0
    sends 69% of prompts right. Drawing each batch's weight from (0, 0.2, 5) it tries it 661 times and
    gets 83% right (the best linear rule on a step function)."""
    data, emb = frontier_problem()
    right = {}
    for name, sweep in (("fixed", None), ("sweep", [0.0, 0.2, 5.0])):
        policy = LinUCB(list(data.models), emb.shape[1], alpha=0.5, ridge=1.0)
        learn(
            policy, data, emb, np.arange(200), steps=2000, batch_size=32, cost_weight=5.0, cost_scale=0.05,
            latency_weight=0.0, seed=0, explore_cost_weights=sweep,
        )  # fmt: skip
        right[name] = ((policy.probs(emb, cost_weight=0.0).argmax(1) == 2) == (emb[:, 0] > 0)).mean()
        right[name + "_pulls"] = policy.counts[2]
    assert right["fixed_pulls"] < 50 and right["sweep_pulls"] > 300, right
    assert right["fixed"] < 0.75 and right["sweep"] > 0.8, right


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("fixed", None), (None, None), ("sweep", [0.0, 0.5, 2.0]), ([1, 3], [1.0, 3.0])],
)
def test_explore_weights_from_the_config(spec, expected) -> None:
    cfg = OmegaConf.create({"train": {"cost_weights": spec}})
    setup = type("S", (), {"weights": [0.0, 0.5, 2.0]})()
    assert explore_weights(cfg, setup) == expected


@pytest.mark.parametrize(
    ("spec", "message"), [("all", "fixed, sweep or a list"), ([], "non-empty list"), ([-1], ">= 0")]
)
def test_explore_weights_rejects_bad_specs(spec, message: str) -> None:
    cfg = OmegaConf.create({"train": {"cost_weights": spec}})
    with pytest.raises(ValueError, match=message):
        explore_weights(cfg, type("S", (), {"weights": [0.0]})())


def test_task_labels_from_a_custom_column(tmp_path: Path) -> None:
    data, _ = make_data(8, 0)
    data = data.take(np.arange(4))
    (tmp_path / "o.csv").write_text("prompt_id,model,quality,app\np1,small,0.5,chat\np0,small,0.5,code\n")
    (tmp_path / "p.csv").write_text("prompt_id,prompt,team\np0,a,x\np1,b,y\np2,c,x\np3,d,y\n")
    cfg = OmegaConf.create(
        {
            "evaluation": {"task_column": "team"},
            "data": {"outcomes": str(tmp_path / "o.csv"), "prompts": str(tmp_path / "p.csv")},
        }
    )
    assert task_labels(data, cfg).tolist() == ["x", "y", "x", "y"]  # read from the prompts table
    cfg.evaluation.task_column = "app"  # in the outcomes table, but p2 and p3 have none
    with pytest.raises(ValueError, match="2 prompts of .*o.csv have no value"):
        task_labels(data, cfg)
    cfg.evaluation.task_column = "nope"
    with pytest.raises(ValueError, match="is in neither"):
        task_labels(data, cfg)
    cfg.evaluation.task_column = None
    assert task_labels(data, cfg) is None


def test_eval_warns_when_an_artifact_is_scored_on_its_training_prompts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "artifact").mkdir(parents=True)
    (run / "checkpoint").mkdir()
    record = training_prompts_record("toy", "kfold-5", ["a", "b", "c"])
    (run / "checkpoint" / "checkpoint.json").write_text(
        json.dumps({"run_id": "r1", "training_prompts": record})
    )
    manifest = {"dataset": "toy", "training_run_id": "r1"}
    with pytest.warns(TrainedOnWarning, match="2 of 3 test prompts its training run saw"):
        assert warn_if_trained_on(run / "artifact", manifest, "toy", ["b", "c", "d"]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_trained_on(run / "artifact", manifest, "toy", ["d", "e"]) == 0  # held out: silent
        # another run's checkpoint beside it says nothing about this artifact; another dataset: no warning
        assert warn_if_trained_on(run / "artifact", {"training_run_id": "r2"}, "toy", ["a"]) is None
    with pytest.warns(TrainedOnWarning, match="records no training prompts"):
        assert warn_if_trained_on(tmp_path / "elsewhere", {"dataset": "toy"}, "toy", ["a"]) is None
