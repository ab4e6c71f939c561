"""Does fitting the static encoder's token table to MiniLM's sentence embeddings (tokenlearn's idea) close
its routing gap to MiniLM?

The static encoder (``embedder=static``) is distilled from MiniLM with no data (each vocabulary token alone,
PCA, SIF weights). :func:`router_rl.static_encoder.fit_tokens` then fits the token vectors and a linear map
so that the mean of a prompt's token vectors regresses MiniLM's embedding of the prompt (1 - cosine, Adam),
on the bundled RouteLLM prompts only: no labels, and arena stays held out.

Steps:

1. Settings by the regression loss alone: every ``--sweep`` fit is run on RouteLLM's prompts and scored on a
   seeded held-out 10% of them (the held-out loss after each epoch). No routing result is looked at.
2. The chosen ``--fit`` is built through :func:`router_rl.static_encoder.distill` (cached under
   ``<cache>/static/``, its id keyed by the fit settings and the corpus's sha256).
3. ``experiments/default_wins.py`` on each ``--variants`` (default arena; 3 seeds, the default policy and
   mlp) for MiniLM, the plain distilled encoder and the fitted one; the fitted model is passed as
   ``embedder=static embedder.model=<its directory> embedder.distill=null`` (the same model
   ``embedder=static`` builds with the same fit settings, named by its directory). On ``routellm`` and its
   variants (``routellm-*``) the fit corpus holds the variant's own prompts (train and test, no labels): not
   held out there.

Usage:

    python experiments/static_fit_study.py                                  # arena, about 10 min on 2 cores
    python experiments/static_fit_study.py --variants arena routellm        # + RouteLLM (about 15 min more)
    python experiments/static_fit_study.py --sweep-only --sweep '[{"crops": 2, "epochs": 8}]'  # losses only
    python experiments/static_fit_study.py --fit '{"crops": 2}' --compare-fit '{}' \
        --sweep-results experiments/results/static_fit_sweep.json --out experiments/results/static_fit_crops

Writes ``experiments/results/static_fit.json`` and ``experiments/results/static_fit.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from router_rl import static_encoder as S  # noqa: E402
from router_rl.embeddings import DEFAULT_ENCODER  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_WINS = Path(__file__).parent / "default_wins.py"
SWEEP = [  # the last: FIT_DEFAULTS (5 epochs at 1e-2, the best epoch of the third)
    {"lr": 1e-3, "epochs": 10},
    {"lr": 3e-3, "epochs": 20},
    {"lr": 1e-2, "epochs": 10},
    {"lr": 1e-2, "epochs": 8, "anchor": 1.0},
    {},
]


def sweep(fits: list[dict[str, Any]], dim: int, sif: float) -> list[dict[str, Any]]:
    """Held-out regression loss of each fit (after every epoch) on the plain distilled table."""
    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    path, _ = S.distill(DEFAULT_ENCODER, dim=dim, sif_coefficient=sif, device="cpu")
    # the unrounded table is what distill fits; the cached one is its float16 rounding (a ~1e-3 difference)
    enc = S.StaticEncoder.load(path)
    tokenizer = Tokenizer.from_file(str(S.static_module_dir(path) / "tokenizer.json"))
    rows = []
    for fit in fits:
        spec = S.fit_settings({"corpus": "routellm", **fit})
        texts = S.corpus_texts(spec["corpus"])
        pieces, targets = S.fit_inputs(
            DEFAULT_ENCODER, tokenizer, texts, spec, device="cpu", cache_dir=None, show_progress=False
        )
        t0 = time.perf_counter()  # the crops' MiniLM embeddings: from the embedding cache after the first run
        extra = S.crop_inputs(
            DEFAULT_ENCODER, tokenizer, texts, spec, device="cpu", cache_dir=None, show_progress=False
        )
        crop_seconds = round(time.perf_counter() - t0, 1)
        trainable = np.abs(enc.vectors).sum(axis=1) > 0
        t0 = time.perf_counter()
        _, report = S.fit_tokens(
            enc.vectors, pieces, targets, trainable=trainable, extra=extra, **{k: spec[k] for k in S.FIT_ARGS}
        )
        report["seconds"] = round(time.perf_counter() - t0, 1)
        report["crop_inputs_seconds"] = crop_seconds
        rows.append({"fit": {k: spec[k] for k in (*S.FIT_ARGS, "crops") if k in spec}, **report})
        curve = report["heldout_curve"]
        print(
            f"[static_fit] sweep {rows[-1]['fit']}: held-out loss {report['heldout_loss_distilled']:.4f} -> "
            f"{report['heldout_loss']:.4f} (best epoch {int(np.argmin(curve)) + 1}: {min(curve):.4f})",
            flush=True,
        )
    return rows


def run_default_wins(variants: list[str], args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(DEFAULT_WINS), "--variants", *variants, "--seeds", *map(str, args.seeds),
               "--policies", *args.policies, "--n-boot", str(args.n_boot), "--out", str(out)]  # fmt: skip
        if overrides:
            cmd += ["--override", *overrides]
        print(f"[static_fit] {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
        return {
            "command": " ".join(["python", *cmd[1:]]),
            "seconds": round(time.perf_counter() - t0),
            **result,
        }


def summary(runs: dict[str, dict[str, Any]], variants: list[str], policies: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in variants:
        out[variant] = {}
        for policy in policies:
            ref = np.array(runs["minilm"][variant]["policies"][policy]["aiq_per_seed"])
            rows = {}
            for enc, run in runs.items():
                per_seed = np.array(run[variant]["policies"][policy]["aiq_per_seed"])
                gap = ref - per_seed
                rows[enc] = {
                    "aiq_per_seed": per_seed.tolist(),
                    "aiq": float(per_seed.mean()),
                    "aiq_sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
                    "gap_vs_minilm": float(gap.mean()),
                    "gap_per_seed": gap.tolist(),
                }
            out[variant][policy] = rows
    return out


def markdown(report: dict[str, Any]) -> str:
    fit, chosen = report["fit_settings"], report["fit_report"]
    lines = [
        "# The static encoder fitted to MiniLM's sentence embeddings (`experiments/static_fit_study.py`)",
        "",
        f"Made by `{report['command']}` ({report['seconds']} s on 2 shared cores). The static encoder distilled "
        "from MiniLM (`embedder=static`: each vocabulary token alone, PCA to 256, SIF weights) against the same "
        "table fitted so that the mean of a prompt's token vectors (times a linear map, then projected back to "
        "256 dimensions) regresses MiniLM's embedding of the prompt: 1 - cosine, Adam, on the "
        f"{chosen['n_train'] + chosen['n_heldout']:,} distinct bundled RouteLLM prompts only, no labels "
        "(`router_rl.static_encoder.fit_tokens`). Routing: `experiments/default_wins.py`'s folds and seeds, "
        "the fitted model passed as `embedder=static embedder.model=<its directory> embedder.distill=null`.",
        "",
        f"Tree: HEAD `{report['git']['before']['head'][:10]}`; uncommitted at the start: "
        f"{', '.join(f'`{line.strip()}`' for line in report['git']['before']['uncommitted']) or 'none'}; "
        f"at the end: {', '.join(f'`{line.strip()}`' for line in report['git']['after']['uncommitted']) or 'none'}.",
        "",
        "## 1. Fit settings, chosen on the regression loss alone",
        "",
        f"Held-out: a seeded {fit['holdout']:.0%} of the RouteLLM prompts ({chosen['n_heldout']:,}); mean 1 - "
        "cosine to MiniLM's embedding. `distilled`: the plain table with its least-squares linear map (fitted on "
        "the training prompts), the fit's start. No routing number was looked at to choose.",
        "",
        "`crops`: random word-aligned crops per prompt fitted on beside it, each with MiniLM's embedding of the "
        "crop as its target (`router_rl.static_encoder.crop_texts`; only crops of training prompts; the losses "
        "are on whole prompts); `pairs`: the training pairs, prompts and crops.",
        "",
        *(
            [
                f"Rows from `{report['sweep_results']['path']}`, made by "
                + "; ".join(f"`{c}`" for c in report["sweep_results"]["commands"])
                + ".",
                "",
            ]
            if report.get("sweep_results")
            else []
        ),  # fmt: skip
        "| crops | pairs | lr | batch | epochs | anchor | held-out loss: distilled | after the last epoch "
        "| best epoch (loss) | train loss | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sweep"]:
        f, curve = row["fit"], row["heldout_curve"]
        best = int(np.argmin(curve))
        pairs = row["n_train"] + row.get("n_train_extra", 0)
        lines.append(
            f"| {f.get('crops', 0)} | {pairs:,} | {f['lr']:g} | {f['batch_size']} | {f['epochs']} | "
            f"{f['anchor']:g} | "
            f"{row['heldout_loss_distilled']:.4f} | {row['heldout_loss']:.4f} | {best + 1} ({curve[best]:.4f}) | "
            f"{row['train_loss']:.4f} | {row['seconds']} |"
        )
    lines += [
        "",
        f"Chosen: `{json.dumps({k: fit[k] for k in (*S.FIT_ARGS, 'crops', 'members') if k in fit})}` (encoder `{report['fit_id']}`): held-out loss "
        f"{chosen['heldout_loss_distilled']:.4f} (distilled) -> {chosen['heldout_loss']:.4f} (fitted, after the "
        f"projection to {report['dim']} dimensions; {chosen['heldout_loss_fitted']:.4f} before it); training "
        f"loss {chosen['train_loss_distilled']:.4f} -> {chosen['train_loss']:.4f}; held-out after each epoch "
        f"{', '.join(f'{v:.4f}' for v in chosen['heldout_curve'])}"
        + (
            f" (member 0's); each member's held-out loss before the averaging "
            f"{', '.join(f'{v:.4f}' for v in chosen['member_heldout_loss'])}."
            if chosen.get("member_heldout_loss")
            else "."
        ),
        "",
        *(
            [
                f"Compared with: `{json.dumps(report['compare_fit']['given'])}` (encoder "
                f"`{report['compare_fit']['fit_id']}`): held-out loss "
                f"{report['compare_fit']['fit_report']['heldout_loss']:.4f}.",
                "",
            ]
            if report.get("compare_fit")
            else []
        ),
        "## 2. Routing: AIQ per seed, mean (sd), gap to MiniLM (MiniLM - encoder, paired by seed)",
        "",
    ]
    names = {"minilm": "MiniLM (torch)", "static": "static, distilled", "static_fit": "static, fitted"}
    if report.get("compare_fit") is not None:
        names["static_fit"] = "static, fitted (chosen)"
        names["static_fit_compare"] = f"static, fitted (`{json.dumps(report['compare_fit']['given'])}`)"
    for variant, per_policy in report["routing"].items():
        own = variant.split("-")[0] == report["fit_settings"]["corpus"]  # routellm's variants are its prompts
        held = "the fit's own prompts, no labels: not held out" if own else "held out from the fit"
        lines += [f"### {variant} ({held})", ""]
        lines += [
            "| policy | encoder | AIQ per seed | mean (sd) | gap to MiniLM (per seed) |",
            "|---|---|---|---:|---:|",
        ]
        for policy, rows in per_policy.items():
            for enc, r in rows.items():
                seeds = ", ".join(f"{v:.4f}" for v in r["aiq_per_seed"])
                gaps = ", ".join(f"{v:+.4f}" for v in r["gap_per_seed"])
                gap = "-" if enc == "minilm" else f"{r['gap_vs_minilm']:+.4f} ({gaps})"
                lines.append(
                    f"| {policy} | {names[enc]} | {seeds} | {r['aiq']:.4f} ({r['aiq_sd']:.4f}) | {gap} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def git_state() -> dict[str, Any]:
    """HEAD and the paths with uncommitted changes (other work in the tree changes what a run measures)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout

    return {
        "head": git("rev-parse", "HEAD").strip(),
        "uncommitted": git("status", "--porcelain").splitlines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["arena"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=["default", "mlp"])
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument(
        "--fit", type=json.loads, default={}, help="fit settings (JSON; default: FIT_DEFAULTS)"
    )
    parser.add_argument(
        "--sweep", type=json.loads, default=SWEEP, help="JSON list of fits scored on held-out loss"
    )
    parser.add_argument(
        "--sweep-results", type=Path, default=None,
        help="a --sweep-only run's JSON: its sweep rows are reported instead of refitting",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-only", action="store_true", help="score the --sweep fits, write <out>_sweep.json, stop"
    )
    parser.add_argument(
        "--compare-fit", type=json.loads, default=None,
        help="another fit (JSON settings; {} is FIT_DEFAULTS) routed beside the chosen one, paired by seed",
    )  # fmt: skip
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--sif-coefficient", type=float, default=1e-5)
    parser.add_argument("--out", type=Path, default=RESULTS / "static_fit")
    args = parser.parse_args()
    t0 = time.perf_counter()
    state_before = git_state()
    given_rows = None
    if args.sweep_results is not None:
        given_rows = json.loads(args.sweep_results.read_text())
        rows = given_rows["sweep"]
    else:
        rows = sweep(args.sweep, args.dim, args.sif_coefficient)
    if args.sweep_only:
        out = args.out.with_name(args.out.name + "_sweep.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "python experiments/static_fit_study.py " + " ".join(sys.argv[1:])
        out.write_text(json.dumps({"command": command, "git": state_before, "sweep": rows}, indent=2) + "\n")
        return
    fit = {"corpus": "routellm", **args.fit}
    path, fit_id = S.distill(
        DEFAULT_ENCODER, dim=args.dim, sif_coefficient=args.sif_coefficient, fit=fit, device="cpu",
        show_progress=False,
    )  # fmt: skip
    sidecar = json.loads((path / S.SIDE_CAR).read_text())
    encoders = {
        "minilm": [],
        "static": ["embedder=static", "embedder.distill.fit=null", f"embedder.distill.dim={args.dim}",
                   f"embedder.distill.sif_coefficient={args.sif_coefficient}"],
        "static_fit": ["embedder=static", f"embedder.model={path}", "embedder.distill=null"],
    }  # fmt: skip
    compare = None
    if args.compare_fit is not None:
        other, other_id = S.distill(
            DEFAULT_ENCODER, dim=args.dim, sif_coefficient=args.sif_coefficient,
            fit={"corpus": "routellm", **args.compare_fit}, device="cpu", show_progress=False,
        )  # fmt: skip
        other_car = json.loads((other / S.SIDE_CAR).read_text())
        compare = {"given": args.compare_fit, "fit_id": other_id, "fit_settings": other_car["settings"]["fit"],
                   "fit_report": other_car["fit"]}  # fmt: skip
        encoders["static_fit_compare"] = [
            "embedder=static",
            f"embedder.model={other}",
            "embedder.distill=null",
        ]
    runs = {name: run_default_wins(args.variants, args, ov) for name, ov in encoders.items()}
    report = {
        "command": "python experiments/static_fit_study.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - t0),
        "git": {"before": state_before, "after": git_state()},
        "dim": args.dim,
        "sweep": rows,
        "sweep_results": None
        if given_rows is None
        else {
            "path": str(args.sweep_results),
            "commands": given_rows.get("commands", [given_rows.get("command")]),
        },
        "fit_settings": sidecar["settings"]["fit"],
        "fit_id": fit_id,
        "fit_report": sidecar["fit"],
        "compare_fit": compare,
        "routing": summary(runs, args.variants, args.policies),
        "default_wins": {
            name: {"command": run["command"], "seconds": run["seconds"]} for name, run in runs.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
