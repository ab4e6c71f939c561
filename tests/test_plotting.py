"""plot_frontier writes a valid PNG from a report.json-shaped dict."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from router_rl.plotting import draw_frontier, frontier_title, place_labels, plot_frontier, short_label

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
    assert img.shape[:2] == (720, 1320)  # figsize (11, 6) at dpi 120: the legend beside the plot
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


def _zoo_report(n_models: int, n_policies: int) -> dict:
    """A crowded comparison: models near each other on both axes, ``n_policies`` routers."""
    rng = np.random.default_rng(0)
    report = _report()
    report["models"] = {
        f"vendor/model-{i:02d}": {"cost_usd": float(10 ** rng.uniform(-4, -1.5)), "quality": float(q)}
        for i, q in enumerate(rng.uniform(0.5, 0.9, size=n_models))
    }
    line = report["policies"]["linucb"]
    report["policies"] = {f"router_{j}": line for j in range(n_policies - 1)} | {"zero_router": line}
    return report


def _label_boxes(fig, info: dict) -> list:
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in info["labels"].values() if t is not None]


@pytest.mark.parametrize("n_models", [5, 16, 24])
def test_model_labels_never_overlap_and_every_model_is_named(n_models: int) -> None:
    fig, info = draw_frontier(_zoo_report(n_models, 3))
    boxes = _label_boxes(fig, info)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    axes = fig.axes[0].get_window_extent(fig.canvas.get_renderer())
    assert all(axes.x0 <= b.x0 and b.x1 <= axes.x1 and axes.y0 <= b.y0 and b.y1 <= axes.y1 for b in boxes)
    named = {m for m, t in info["labels"].items() if t is not None}
    assert named | set(info["numbered"]) == set(_zoo_report(n_models, 3)["models"])
    assert len(named) >= n_models // 2  # most models keep a label beside their dot


def test_a_large_catalog_is_numbered_with_a_key() -> None:
    fig, info = draw_frontier(_zoo_report(56, 3))
    assert len(info["numbered"]) == 56 and not _label_boxes(fig, info)
    key = "\n".join(t.get_text() for t in fig.texts)
    assert " 1  model-" in key and "56  model-" in key
    assert fig.get_size_inches()[1] > 6  # the key has its own band under the plot


def test_legend_has_one_name_for_the_zero_router_and_routers_have_distinct_styles() -> None:
    _, info = draw_frontier(_zoo_report(5, 11))
    assert not any("zero router" in text for text in info["legend"])  # one spelling: zero_router
    assert [t.split(" (")[0] for t in info["legend"] if "zero_router" in t] == [
        "zero_router: hull of the single models", "zero_router, learned"
    ]  # fmt: skip
    assert len(set(info["styles"].values())) == 11


@pytest.mark.parametrize(
    ("scheme", "split", "title"),
    [
        ("kfold-5", "all (cross-fitted)", "arena: 300 prompts, each tested once (5-fold cross-fitting)"),
        ("holdout", "test", "arena: 300 prompts of the held-out test split"),
    ],
)
def test_title_says_the_scheme_once(scheme: str, split: str, title: str) -> None:
    report = _report() | {"scheme": scheme, "split": split}
    assert frontier_title(report) == title


def test_place_labels_moves_a_label_off_its_neighbour_and_gives_up_without_room() -> None:
    bounds = (0.0, 0.0, 200.0, 100.0)
    placed = place_labels([(50, 50), (52, 50)], [(40, 8), (40, 8)], obstacles=[], bounds=bounds)
    assert placed[0] is not None and placed[1] is not None and placed[0] != placed[1]
    assert place_labels([(5, 5)], [(400, 8)], obstacles=[], bounds=bounds) == [None]
