"""Smoke test of experiments/bench_policies.py: a tiny run writes its reports with ratios against VW."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("vowpalwabbit")

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_policies.py"


def test_quick_policies_section_writes_reports_with_vw_ratios(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("bench_policies", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(
        ["--quick", "--sections", "policies", "--policies", "linucb", "random", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "bench_policies_quick.json").read_text())
    two = {"linucb (2 threads)"} if (os.cpu_count() or 1) >= 2 else set()
    assert set(saved["policies"]) == {"vw core", "linucb", "random"} | two
    for name in ("linucb", "random", *two):
        row = saved["policies"][name]
        for b in (1, 256):
            assert row[f"decide_us_b{b}"] > 0 and row[f"update_us_b{b}"] > 0
            assert row[f"decide_us_b{b}_vs_vw"] == pytest.approx(
                row[f"decide_us_b{b}"] / saved["policies"]["vw core"][f"decide_us_b{b}"]
            )
    assert saved["machine"]["versions"]["vowpalwabbit"] and res["quick"] is True
    assert "| linucb |" in (tmp_path / "bench_policies_quick.md").read_text()
