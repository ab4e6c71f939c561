"""Prompt representation and encoders: what routing loses when prompts share a template, and what wins it back.

    python experiments/representation_study.py                     # everything (about an hour on 2 cores)
    python experiments/representation_study.py --quick             # one seed, arena only (minutes)
    python experiments/representation_study.py --variants templated --encoders minilm --seeds 0

Every figure comes from ``router_rl.training.train`` (the code path of ``router-rl train``) on data written as
a user's files (``data=custom``), with ``--policy`` (``linucb``: representation.json; the default, ``lowrank_warm``:
``--policy lowrank_warm --out experiments/results/representation_default.json``), k-fold
cross-fitting as the train command picks it, no baselines, no MLflow and no export:

- variants: ``plain`` (the bundled arena prompts), ``templated`` (every arena prompt inside one shared
  ~430-token system prompt, ``experiments/templates/system_prompt.txt``, in a flattened chat template),
  ``fewshot-A`` and ``fewshot-B`` (RouteLLM's MMLU questions with GPT-4 / Mixtral outcomes, each prompt
  behind the 5-shot block of its subject as MMLU's 5-shot evaluation builds it: the subject header and five
  other questions of that subject with an answer letter; the letters are placeholders, drawn at random,
  as the data does not record the right options; A and B are disjoint question samples), ``routellm`` (the
  bundled RouteLLM prompts, plain; holdout split as the train command picks it), ``multitemplated`` (each
  arena prompt inside one of four unrelated apps' system prompts, ``experiments/templates/system_prompt*.txt``,
  75 each, drawn at random) and ``halftemplated`` (a random half inside the one system prompt, the other half
  plain): templates that say nothing about the prompt.
- encoders: ``minilm`` (the default, torch) and ``static`` (distilled from it, ``embedder=static``).
- representations: ``head`` (the first 256 tokens: the old behaviour), ``head_tail`` (128 + 126),
  ``chunks`` (254-token chunks mean-pooled), each with and without learned affixes (``affix+...``);
  ``affixpool+head`` and ``affixcenter+head`` (affixes learned, their embedding added back: ``affixes.mode``
  ``pool`` and ``center``).

Thresholds (affix share and length, window sizes) are chosen on ``fewshot-A`` only; the other variants
report. Per run: AIQ, cost at 95% / 97% of the best model's quality (as a fraction of its cost), the share of
prompts embedded identically to a prompt with another text, and the learned affixes; per encoder and
representation, prompts/s on the templated arena prompts (no cache). Results go to
``experiments/results/representation.json`` (every run; reruns skip what is there) and ``representation.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DATASETS = ROOT / "router_rl" / "datasets"
SYSTEM_PROMPT = (ROOT / "experiments" / "templates" / "system_prompt.txt").read_text()
TEMPLATE = "<|system|>\n{system}<|user|>\n{prompt}\n<|assistant|>\n"

VARIANTS = ("plain", "templated", "fewshot-A", "fewshot-B", "routellm", "multitemplated", "halftemplated")
# system prompts of four unrelated apps: multitemplated gives each arena prompt one of them at random
SYSTEM_PROMPTS = [SYSTEM_PROMPT] + [
    (ROOT / "experiments" / "templates" / f"system_prompt_{k}.txt").read_text() for k in "bcd"
]
ENCODERS = {"minilm": ["embedder=minilm"], "static": ["embedder=static"]}
WINDOWS = {
    "head": ["embedder.representation.window=head"],
    "head_tail": ["embedder.representation.window=head_tail"],
    "chunks": ["embedder.representation.window=chunks"],
}
REPRESENTATIONS = {
    **{name: [*w, "embedder.representation.affixes.enabled=false"] for name, w in WINDOWS.items()},
    **{
        f"affix+{name}": [
            *w,
            "embedder.representation.affixes.enabled=true",
            "embedder.representation.affixes.mode=drop",
        ]
        for name, w in WINDOWS.items()
    },
}
REPRESENTATIONS["affixpool+head"] = [*WINDOWS["head"], "embedder.representation.affixes.enabled=true",
                                     "embedder.representation.affixes.mode=pool"]  # fmt: skip
REPRESENTATIONS["affixauto+head"] = [*WINDOWS["head"], "embedder.representation.affixes.enabled=true",
                                     "embedder.representation.affixes.mode=auto"]  # fmt: skip
REPRESENTATIONS["affixcenter+head"] = [*WINDOWS["head"], "embedder.representation.affixes.enabled=true",
                                       "embedder.representation.affixes.mode=center"]  # fmt: skip
STATIC_SKIP = {"chunks", "affix+chunks"}  # a token lookup's chunk mean is its whole-prompt mean
# the tuning grid on fewshot-A: affix@<min_share>@<min_chars>+<window>
TUNING = [f"affix@{share}@{chars}+head" for share in (0.05, 0.02, 0.01) for chars in (200,)]
TUNING += [f"affix@0.01@{chars}+head" for chars in (100, 400)]


def representation_overrides(name: str) -> list[str]:
    """Overrides of a representation name: a key of REPRESENTATIONS, or affix@<share>@<chars>+<window>."""
    if name in REPRESENTATIONS:
        return REPRESENTATIONS[name]
    affix, window = name.split("+")
    _, share, chars = affix.split("@")
    return [
        *WINDOWS[window],
        "embedder.representation.affixes.enabled=true",
        f"embedder.representation.affixes.min_share={share}",
        f"embedder.representation.affixes.min_chars={chars}",
    ]


# ------------------------------------------------------------------------------------------ variants
def _read_prompts(stem: str) -> list[dict]:
    with gzip.open(DATASETS / f"{stem}_prompts.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _write_variant(folder: Path, stem: str, rows: list[dict]) -> list[str]:
    """A custom dataset: the bundled outcomes and catalog with ``rows`` as its prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "prompts.jsonl.gz", "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"prompt_id": row["prompt_id"], "prompt": row["prompt"]}) + "\n")
    ids = {r["prompt_id"] for r in rows}
    import pandas as pd

    outcomes = pd.read_csv(DATASETS / f"{stem}.csv.gz")
    outcomes = outcomes[outcomes["prompt_id"].isin(ids)]
    outcomes.to_csv(folder / "outcomes.csv.gz", index=False)
    return [
        "data=custom",
        f"data.outcomes={folder / 'outcomes.csv.gz'}",
        f"data.prompts={folder / 'prompts.jsonl.gz'}",
        f"data.models={DATASETS / 'models.csv'}",
    ]


def fewshot_rows(sample: str, per_subject: int, seed: int = 0) -> list[dict]:
    """MMLU prompts of RouteLLM's data, each behind a 5-shot block of five other questions of its subject.

    Sample ``A`` and ``B`` take disjoint questions (A from the first half of a seeded shuffle of each
    subject, B from the second); the shots come from questions in neither sample."""
    rng = np.random.default_rng(seed)
    by_subject: dict[str, list[dict]] = {}
    for row in _read_prompts("routellm_gpt4_vs_mixtral"):
        if row["source_benchmark"].startswith("routellm/mmlu/"):
            by_subject.setdefault(row["source_benchmark"].rsplit("/", 1)[1], []).append(row)
    out = []
    for subject in sorted(by_subject):
        rows = by_subject[subject]
        order = rng.permutation(len(rows))
        shots, rest = [rows[i] for i in order[:5]], [rows[i] for i in order[5:]]
        half = len(rest) // 2
        chosen = rest[:half][:per_subject] if sample == "A" else rest[half:][:per_subject]
        letters = rng.choice(list("ABCD"), size=5)
        block = mmlu_shot_block(subject, [s["prompt"] for s in shots], letters)
        out += [{"prompt_id": r["prompt_id"], "prompt": block + r["prompt"]} for r in chosen]
    return out


def mmlu_shot_block(subject: str, questions: Sequence[str], letters: Sequence[str]) -> str:
    """MMLU's k-shot block for ``subject``: its header, then each question with an answer letter."""
    block = (
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    )
    return block + "".join(f"{q} {letter}\n\n" for q, letter in zip(questions, letters, strict=True))


def variant_overrides(name: str, folder: Path) -> list[str]:
    if name == "routellm":
        return ["data=routellm"]
    if name in ("plain", "templated", "multitemplated", "halftemplated"):
        rows = _read_prompts("arena_bench_v1_gpt4judge")
        if name == "templated":
            rows = [{**r, "prompt": TEMPLATE.format(system=SYSTEM_PROMPT, prompt=r["prompt"])} for r in rows]
        elif name != "plain":  # templates that say nothing about the prompt: four apps, or half with one
            rng = np.random.default_rng(7)
            systems = SYSTEM_PROMPTS if name == "multitemplated" else [SYSTEM_PROMPT, None]
            which = rng.permutation(np.arange(len(rows)) % len(systems))
            rows = [
                {
                    **r,
                    "prompt": r["prompt"]
                    if systems[k] is None
                    else TEMPLATE.format(system=systems[k], prompt=r["prompt"]),
                }
                for r, k in zip(rows, which, strict=True)
            ]
        return _write_variant(folder / name, "arena_bench_v1_gpt4judge", rows)
    sample = name.rsplit("-", 1)[1]
    rows = fewshot_rows(sample, per_subject=10 if sample == "A" else 20)
    return _write_variant(folder / name, "routellm_gpt4_vs_mixtral", rows)


# ------------------------------------------------------------------------------------------ runs
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


POLICY = ["linucb"]  # the policy these figures are about (configs/policy/<name>.yaml; --policy)
BASE = [
    "policy=linucb",
    "mlflow.enabled=false",
    "export.enabled=false",
    "registry.name=null",
    "evaluation.baselines=[]",
]


def run_one(overrides: list[str], seed: int, out_dir: Path) -> dict:
    """One ``train`` run: the policy's AIQ and headline costs, and what the embedding step reported."""
    from router_rl.embeddings import EmbeddingWarning
    from router_rl.training import train

    cfg = compose([*BASE, f"policy={POLICY[0]}", *overrides, f"seed={seed}"])
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(record=True) as caught, quiet[0], quiet[1]:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        report = train(cfg, out_dir)
        seconds = time.perf_counter() - t0
    entry = report["policies"][cfg.policy.get("label") or POLICY[0]]
    flagged = [str(w.message) for w in caught if issubclass(w.category, EmbeddingWarning)]
    return {
        "aiq": entry["aiq"],
        "cost_at_95": entry.get("cost_fraction_at_95"),
        "cost_at_97": entry.get("cost_fraction_at_97"),
        "scheme": report["scheme"],
        "n_prompts": report["n_prompts"],
        "warned": flagged[0] if flagged else None,
        "seconds": round(seconds, 1),
    }


def embedding_facts(overrides: list[str]) -> dict:
    """The representation the train command learns and what it does to the prompts (cached embeddings)."""
    from router_rl.representation import identical_embeddings
    from router_rl.training import fit_representation, load_data, make_embedder

    cfg = compose([*BASE, *overrides])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_data(cfg.data)
    prompts = list(data.prompts)
    rep = fit_representation(cfg.embedder, prompts)
    embedder = make_embedder(cfg.embedder, show_progress=False, representation=rep)
    x = embedder.encode(prompts)
    same, groups = identical_embeddings(prompts, x)
    return {
        "encoder_id": embedder.encoder_id,
        "representation": rep.describe(),
        "prefixes": len(rep.prefixes),
        "suffixes": len(rep.suffixes),
        "prefix_chars": [len(p) for p in rep.prefixes][:8],
        "stripped": rep.learned.get("prompts_stripped", 0),
        "identical_share": same / len(prompts),
        "identical_groups": groups,
    }


def cosine_to_plain(encoder: str, representation: str) -> float:
    """Mean cosine between each templated arena prompt's embedding and its plain prompt's (plain head
    representation), each under what the train command learns from its own prompts (cached embeddings)."""
    from router_rl.training import fit_representation, make_embedder

    rows = _read_prompts("arena_bench_v1_gpt4judge")
    plain = [r["prompt"] for r in rows]
    templated = [TEMPLATE.format(system=SYSTEM_PROMPT, prompt=p) for p in plain]
    out = []
    for texts, rep in ((plain, "head"), (templated, representation)):
        cfg = compose([*BASE, *ENCODERS[encoder], *representation_overrides(rep)])
        embedder = make_embedder(
            cfg.embedder, show_progress=False, representation=fit_representation(cfg.embedder, texts)
        )
        out.append(embedder.encode(texts))
    return float((out[0] * out[1]).sum(axis=1).mean())


def speed(encoder: str, representation: str, prompts: list[str]) -> dict:
    """Prompts/s of the encoder under the representation, no cache, on ``prompts`` (the train config)."""
    from router_rl.training import fit_representation, make_embedder

    cfg = compose(
        [*BASE, *ENCODERS[encoder], *representation_overrides(representation), "embedder.cache_dir=null"]
    )
    rep = fit_representation(cfg.embedder, prompts)
    embedder = make_embedder(cfg.embedder, show_progress=False, representation=rep)
    embedder.encode(prompts[:4])  # load
    t0 = time.perf_counter()
    embedder.encode(prompts)
    return {"prompts_per_s": len(prompts) / (time.perf_counter() - t0), "n": len(prompts)}


# ------------------------------------------------------------------------------------------ report
def summarise(rows: list[dict], key: str) -> tuple[float, float, int]:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def _frac(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "not reached"


def drop_table(runs: list[dict]) -> list[str]:
    """Templated minus plain AIQ per seed (the same folds and exploration draws), same encoder and representation."""
    aiq = {(r["variant"], r["encoder"], r["representation"], r["seed"]): r["aiq"] for r in runs}
    rows = []
    for (variant, encoder, rep, seed), value in sorted(aiq.items()):
        if variant == "templated" and ("plain", encoder, rep, seed) in aiq:
            rows.append((encoder, rep, seed, value - aiq[("plain", encoder, rep, seed)]))
    if not rows:
        return []
    lines = [
        "## Templated minus plain (paired by seed: same folds and draws)",
        "",
        "| encoder | representation | AIQ change (mean) | per seed |",
        "|---|---|---|---|",
    ]
    for encoder, rep in sorted({(e, r) for e, r, _, _ in rows}):
        d = [(s, v) for e, r, s, v in rows if (e, r) == (encoder, rep)]
        per_seed = ", ".join(f"{s}: {v:+.4f}" for s, v in d)
        lines.append(f"| {encoder} | {rep} | {np.mean([v for _, v in d]):+.4f} | {per_seed} |")
    return [*lines, ""]


def write_markdown(results: dict, path: Path) -> None:
    runs = results["runs"]
    facts = results.get("facts", {})
    lines = [
        "# Prompt representation and encoders",
        "",
        f"Made by `python experiments/representation_study.py` on {results['machine']}; every run is "
        f"`router_rl.training.train` (the code path of `router-rl train`, policy {results.get('policy', 'linucb')}, "
        "k-fold as train picks it, no baselines). AIQ: mean (sd) over seeds; costs: the least cost reaching 95% / 97% of the "
        "best single model's quality, as a fraction of its cost (mean over seeds); identical: share of prompts "
        "embedded bitwise like a prompt with another text.",
        "",
    ]
    for variant in VARIANTS:
        keys = sorted({(r["encoder"], r["representation"]) for r in runs if r["variant"] == variant})
        if not keys:
            continue
        lines += [
            f"## {variant}",
            "",
            "| encoder | representation | AIQ (sd) | seeds | cost @95% | cost @97% | identical | affixes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for encoder, rep in keys:
            sel = [
                r
                for r in runs
                if (r["variant"], r["encoder"], r["representation"]) == (variant, encoder, rep)
            ]
            aiq, sd, n = summarise(sel, "aiq")
            c95, _, _ = summarise(sel, "cost_at_95")
            c97, _, _ = summarise(sel, "cost_at_97")
            f = facts.get(f"{variant}|{encoder}|{rep}", {})
            affixes = f"{f.get('prefixes', 0)}p/{f.get('suffixes', 0)}s" if f else ""
            lines.append(
                f"| {encoder} | {rep} | {aiq:.4f} ({sd:.4f}) | {n} | {_frac(c95)} | {_frac(c97)} | "
                f"{f.get('identical_share', float('nan')):.1%} | {affixes} |"
            )
        lines.append("")
    lines += drop_table(runs)
    if results.get("cosine_to_plain"):
        lines += [
            "## Templated arena prompts: cosine of their embedding to the plain prompt's",
            "",
            "| encoder | representation | mean cosine |",
            "|---|---|---|",
            *(
                f"| {k.split('|')[0]} | {k.split('|')[1]} | {v:.4f} |"
                for k, v in sorted(results["cosine_to_plain"].items())
            ),
            "",
        ]
    if results.get("speed"):
        lines += [
            "## Encoding speed (templated arena prompts, ~530 tokens, no cache)",
            "",
            "| encoder | representation | prompts/s |",
            "|---|---|---|",
        ]
        for key, value in sorted(results["speed"].items()):
            encoder, rep = key.split("|")
            lines.append(f"| {encoder} | {rep} | {value['prompts_per_s']:.1f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--representations", default=",".join(REPRESENTATIONS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="one seed, plain and templated arena")
    parser.add_argument("--tuning", action="store_true", help="the affix grid on fewshot-A (minilm, head)")
    parser.add_argument("--no-speed", action="store_true", help="skip the prompts/s measurements")
    parser.add_argument("--policy", default="linucb", help="configs/policy/ option the runs train")
    parser.add_argument("--out", default=str(RESULTS / "representation.json"))
    args = parser.parse_args(argv)
    POLICY[0] = args.policy
    variants = ["plain", "templated"] if args.quick else args.variants.split(",")
    if args.tuning:
        variants, args.encoders, args.no_speed = ["fewshot-A"], "minilm", True
        args.representations = ",".join(["head", "head_tail", "chunks", *TUNING])
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": [], "facts": {}, "speed": {}}
    if results.setdefault("policy", args.policy) != args.policy:
        parser.error(f"{out} holds runs of policy {results['policy']}; pass another --out for {args.policy}")
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    done = {(r["variant"], r["encoder"], r["representation"], r["seed"]) for r in results["runs"]}

    def save() -> None:
        results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out.write_text(json.dumps(results, indent=1))
        write_markdown(results, out.with_suffix(".md"))

    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            data = variant_overrides(variant, Path(tmp))
            for encoder in args.encoders.split(","):
                for rep in args.representations.split(","):
                    if encoder == "static" and rep in STATIC_SKIP:
                        continue
                    overrides = [*data, *ENCODERS[encoder], *representation_overrides(rep)]
                    key = f"{variant}|{encoder}|{rep}"
                    if key not in results["facts"]:
                        results["facts"][key] = embedding_facts(overrides)
                        save()
                    for seed in seeds:
                        if (variant, encoder, rep, seed) in done:
                            continue
                        row = run_one(overrides, seed, Path(tmp) / "run")
                        results["runs"].append(
                            {
                                "variant": variant,
                                "encoder": encoder,
                                "representation": rep,
                                "seed": seed,
                                **row,
                            }
                        )
                        save()
                        print(
                            f"{key} seed {seed}: AIQ {row['aiq']:.4f} ({row['seconds']} s)", file=sys.stderr
                        )
        if "templated" in variants:
            results.setdefault("cosine_to_plain", {})
            for encoder in args.encoders.split(","):
                for rep in args.representations.split(","):
                    key = f"{encoder}|{rep}"
                    if (encoder == "static" and rep in STATIC_SKIP) or key in results["cosine_to_plain"]:
                        continue
                    results["cosine_to_plain"][key] = cosine_to_plain(encoder, rep)
                    save()
        if not args.no_speed:
            rows = _read_prompts("arena_bench_v1_gpt4judge")[:100]
            prompts = [TEMPLATE.format(system=SYSTEM_PROMPT, prompt=r["prompt"]) for r in rows]
            for encoder in args.encoders.split(","):
                for rep in args.representations.split(","):
                    key = f"{encoder}|{rep}"
                    if (encoder == "static" and rep in STATIC_SKIP) or key in results["speed"]:
                        continue
                    results["speed"][key] = speed(encoder, rep, prompts)
                    save()
    save()
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
