"""A two-model dataset end to end: RouteLLM's APGR/CPT appear in the report, from the user's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import run_cli

from router_rl.data import bundled_paths


def test_routellm_subset_as_custom_data(tmp_path: Path, cache_dir: Path) -> None:
    outcomes_path, prompts_path, models_path = bundled_paths("routellm")
    outcomes = pd.read_csv(outcomes_path)
    keep = outcomes["prompt_id"].drop_duplicates().sample(n=80, random_state=0)
    outcomes[outcomes["prompt_id"].isin(keep)].to_csv(tmp_path / "outcomes.csv", index=False)
    prompts = pd.read_json(prompts_path, lines=True)
    prompts[prompts["prompt_id"].isin(keep)].to_json(tmp_path / "prompts.jsonl", orient="records", lines=True)
    proc = run_cli(
        [
            "train", "debug=default", "data=custom", "data.outcomes=outcomes.csv", "data.prompts=prompts.jsonl",
            f"data.models={models_path}", "mlflow.enabled=false", "hydra.run.dir=out",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dataset"] == "outcomes" and len(report["models"]) == 2
    two = report["two_model"]
    assert two["q_strong"] > two["q_weak"]
    for name in ("blend", "random", "zero_router"):  # the default policy and the baselines
        entry = two["routers"][name]
        assert 0.0 <= entry["apgr"] <= 1.0 and 0.0 <= entry["cpt50"] <= entry["cpt80"] <= 1.0
        shares = [p["strong_share"] for p in entry["points"]]
        assert len(shares) > 30  # the dense sweep covers the range of strong-call shares
    assert "APGR" in proc.stdout
    assert (tmp_path / "out" / "learning_curves.png").is_file()
