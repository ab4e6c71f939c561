"""plot_frontier writes a valid PNG from a report.json-shaped dict."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from router_rl.plotting import plot_frontier, short_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report() -> dict:
    return {
        "dataset": "arena",
        "split": "test",
        "scheme": "5-fold cross-fitting",
        "n_prompts": 300,
        "models": {
            "gpt-4-1106-preview": {"quality": 0.86, "cost_usd": 0.012},
            "gpt-3.5-turbo": {"quality": 0.71, "cost_usd": 0.0011},
            "mistralai/Mixtral-8x7B-Instruct-v0.1": {"quality": 0.74, "cost_usd": 0.0004},
            "mistralai/Mistral-7B-Instruct-v0.1": {"quality": 0.60, "cost_usd": 0.00012},
            "claude-2": {"quality": 0.78, "cost_usd": 0.009},
        },
        "oracle": {"quality": 0.95, "cost_usd": 0.0009},
        "zero_router": {"aiq": 0.812},
        "policies": {
            "linucb": {
                "aiq": 0.835,
                "points": [
                    {"cost_weight": w, "quality": q, "cost_usd": c}
                    for w, q, c in [
                        (0.0, 0.87, 0.010),
                        (0.1, 0.85, 0.004),
                        (0.5, 0.80, 0.0012),
                        (2.0, 0.72, 0.0003),
                    ]
                ],
            },
            "knn": {
                "aiq": 0.820,
                "points": [
                    {"cost_weight": w, "quality": q, "cost_usd": c}
                    for w, q, c in [(0.0, 0.85, 0.011), (0.5, 0.77, 0.002), (2.0, 0.65, 0.0002)]
                ],
            },
        },
    }


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_frontier_writes_png(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = plot_frontier(_report(), tmp_path / "nested" / "pareto.png")
    assert out == tmp_path / "nested" / "pareto.png"
    _assert_png(out)
    img = mpimg.imread(out)
    assert img.shape[:2] == (660, 1020)  # figsize (8.5, 5.5) at dpi 120
    assert img[..., :3].std() > 0.05  # not blank


def test_plot_frontier_zero_cost_and_missing_optional_keys(tmp_path: Path) -> None:
    report = _report()
    report["models"]["local-llama"] = {"quality": 0.5, "cost_usd": 0.0}  # log axis cannot show 0: symlog
    for key in ("oracle", "zero_router", "scheme"):
        del report[key]
    report["policies"]["empty"] = {"aiq": 0.0, "points": []}
    _assert_png(plot_frontier(report, tmp_path / "p.png"))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("models"), r"'models' mapping"),
        (lambda r: r["models"].clear(), r"'models'\] is empty"),
        (lambda r: r["policies"]["knn"]["points"][0].pop("quality"), r"policies\['knn'\]\.points\[.\]"),
    ],
)
def test_plot_frontier_bad_report(tmp_path: Path, mutate: Callable[[dict], object], match: str) -> None:
    report = _report()
    mutate(report)
    with pytest.raises(ValueError, match=match):
        plot_frontier(report, tmp_path / "p.png")


def test_short_label() -> None:
    assert short_label("mistralai/Mistral-7B-Instruct-v0.1") == "Mistral-7B-Instruct…"
    assert short_label("gpt-4-1106-preview") == "gpt-4-1106-preview"


def test_import_is_cheap() -> None:
    code = "import sys, router_rl.plotting; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
