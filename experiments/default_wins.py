"""Does the default policy win? It against every policy and yardstick, on the bundled data and on held-out
stress variants, with paired bootstrap intervals over prompts.

For each dataset or variant: every policy is trained per fold (as ``router-rl eval`` does: bandits from
bandit feedback in the simulator, supervised routers and warm starts from the training prompts' full
outcomes) over ``--seeds``, evaluated on the held-out prompts over the cost-weight sweep; beside them the
yardsticks: the zero router (hull of the single models), the best single model, ``logreg`` (per-model
logistic regression, full information), ``task_mean`` (each model's mean per task, where the data has more
than one task) and the oracle. Then the paired bootstrap (:func:`router_rl.metrics.paired_bootstrap_aiq`)
of the default's AIQ minus every other router's.

Tuning and held-out data: the policies' settings were tuned on ``arena`` only (5-fold AIQ). Everything else
is held out, never looked at while choosing settings:

- ``routellm``: the bundled GPT-4 vs Mixtral data (15,521 prompts, a seeded 80/20 split).
- ``routellm-gsm8k``, ``routellm-mtbench``: one benchmark each (1,319 and 160 prompts, 5-fold).
- ``routellm-mmlu1500``: 1,500 MMLU prompts drawn across its 57 subjects (the task column), 5-fold.
- ``routellm-mix300``: 300 prompts drawn from all three benchmarks (few prompts, mixed tasks), 5-fold.
- ``arena-skewed``: arena's 16 models with every model's prices multiplied by a seeded log-normal factor
  (sd 1 in log space, ~2.7x either way): the cost-quality frontier changes, the grades do not. Its grades
  are the tuning set's, so it tests the settings against new prices only.
- ``arena-8models``: 8 of arena's 16 models drawn at random (seeded), their columns only: a smaller catalog
  with a different frontier (added after the settings were fixed; nothing was tuned on it).
- ``routellm-mix600``: 600 prompts drawn from all three benchmarks with another seed (added with
  ``arena-8models``; it played no part in choosing anything).
- ``routellm-fewshot600``: ``routellm-mix600``'s prompts as a benchmark harness sends them, the way
  RouterBench's ARC and Winogrande prompts arrive (added after every setting was fixed): each GSM8K question
  behind one identical 8-shot block (eight other GSM8K questions, answers as placeholders: the data does not
  record them), each MMLU question behind its subject's 5-shot block (MMLU's own format, five other questions
  of the subject, placeholder letters), each MT-Bench prompt inside one ~430-token system prompt
  (``templates/system_prompt.txt``). The shots come from prompts outside the 600. Embedded with affixes
  learned from the 600 prompts and dropped (``affixes.mode=drop``), so the folds, outcomes and draws are
  mix600's: the default's AIQ here minus there is the cost of the templates, paired.
  ``routellm-fewshot600-head``: the same prompts read as before templates were learned (the first 256
  tokens), for contrast; ``-pool``, ``-center`` and ``-auto`` (the default mode): affixes learned, then
  ``affixes.mode=pool``, ``center`` or ``auto``. ``--contrast`` runs the default policy alone on several of
  these and gives each one's paired interval against the first.

Usage:

    python experiments/default_wins.py                          # every variant, 3 seeds (hours on 2 cores)
    python experiments/default_wins.py --variants arena routellm-gsm8k --seeds 0
    python experiments/default_wins.py --policies lowrank_warm logreg linucb --n-boot 500

Writes ``experiments/results/default_wins.json`` (per variant: the aggregated report with every seed's
points, and the bootstrap comparisons) and ``experiments/results/default_wins.md`` (the tables). Variants
already in the JSON are kept unless run again, so variants can be run one at a time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from router_rl import training as T  # noqa: E402
from router_rl.evaluation import aggregate_reports, build_report, to_json  # noqa: E402
from router_rl.policies.oracle import Oracle  # noqa: E402
from router_rl.reward import default_cost_scale  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BUNDLED = {"arena": "arena", "routellm": "routellm"}
FEWSHOT = {  # variant -> how its prompts' templates are read (embed_as_trained's mode)
    "routellm-fewshot600": "drop",
    "routellm-fewshot600-head": "head",
    "routellm-fewshot600-pool": "pool",
    "routellm-fewshot600-center": "center",
    "routellm-fewshot600-auto": "auto",
}
VARIANTS = [
    "arena",
    "routellm",
    "routellm-gsm8k",
    "routellm-mtbench",
    "routellm-mmlu1500",
    "routellm-mix300",
    "arena-skewed",
    "arena-8models",
    "routellm-mix600",
    *FEWSHOT,
]
ZOO = [
    "default",
    "blend_30passes",
    "blend_replay",
    "lowrank_warm",
    "linucb",
    "lin_ts",
    "lin_ts_warm",
    "eps_greedy",
    "neural_ts",
    "knn",
    "mlp",
    "logreg",
    "zero_router",
    "random",
]
TWO_MODEL_EXTRA = ["routellm_mf"]
PREVIOUS = {  # earlier defaults and tried variants of the default, as rivals: label -> (option, overrides)
    "blend_replay": ("blend", {"mlp_weight": 0.5, "warm_start": {"replay": True}}),
    "blend_30passes": ("blend", {"stack_epochs": False}),  # the network always trains mlp.epochs passes
    "blend_once": ("blend", {"stack_repick": False}),  # passes chosen at the prior weight even when it moves
}


class _NoTracker:
    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass


def compose_cfg(data: str, overrides: list[str]) -> Any:
    with initialize_config_module("router_rl.configs", version_base=None):
        cfg = compose("eval", overrides=[f"data={data}", "mlflow.enabled=false", *overrides])
    rep = cfg.embedder.get("representation")
    if rep is not None and "affixes" in rep:  # the plain prompts: this study is about the policies
        rep.affixes.enabled = False
    return cfg


def variant_setup(name: str, base: T.Setup, cfg: Any) -> T.Setup:
    """A held-out variant of a bundled dataset's setup: a subset of its prompts or rescaled prices."""
    data = base.data
    rng = np.random.default_rng(2024)
    groups = None if data.groups is None else np.asarray(data.groups).astype(str)
    if name == "arena-skewed":
        factor = np.exp(rng.normal(0.0, 1.0, size=data.n_models))
        sub = dataclasses.replace(data, name=name, cost_usd=data.cost_usd * factor)
        rows = np.arange(data.n_prompts)
    elif name == "arena-8models":
        keep = np.sort(np.random.default_rng(7).choice(data.n_models, 8, replace=False))
        models = tuple(data.models[i] for i in keep)
        sub = dataclasses.replace(
            data, name=name, models=models, catalog=data.catalog.subset(models),
            **{f: getattr(data, f)[:, keep] for f in ("quality", "cost_usd", "input_tokens", "output_tokens", "latency_s")},
        )  # fmt: skip
        rows = np.arange(data.n_prompts)
    else:
        if name == "routellm-gsm8k":
            rows = np.flatnonzero(groups == "routellm/gsm8k")
        elif name == "routellm-mtbench":
            rows = np.flatnonzero(np.char.startswith(groups, "routellm/mt_bench"))
        elif name == "routellm-mmlu1500":
            rows = np.sort(
                rng.choice(np.flatnonzero(np.char.startswith(groups, "routellm/mmlu")), 1500, replace=False)
            )
        elif name == "routellm-mix300":
            rows = np.sort(rng.choice(data.n_prompts, 300, replace=False))
        elif name == "routellm-mix600" or name in FEWSHOT:
            rows = np.sort(np.random.default_rng(7).choice(data.n_prompts, 600, replace=False))
        else:
            raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
        sub = dataclasses.replace(data.take(rows), name=name)
    scheme, split_label, plan, final_rows = T.evaluation_plan(sub, cfg.evaluation, cfg.data)
    embeddings = base.embeddings[rows]
    if name in FEWSHOT:
        sub = dataclasses.replace(sub, prompts=harness_prompts(data, rows))
        embeddings = embed_as_trained(cfg, sub, final_rows, mode=FEWSHOT[name])
    return dataclasses.replace(
        base,
        data=sub,
        embeddings=embeddings,
        scheme=scheme,
        split_label=split_label,
        plan=plan,
        final_rows=final_rows,
        cost_scale=default_cost_scale(sub.cost_usd[final_rows]),
    )


def harness_prompts(data: Any, rows: np.ndarray, seed: int = 2024) -> np.ndarray:
    """``routellm-fewshot600``'s prompts: ``data.prompts[rows]`` behind the blocks a benchmark harness puts
    before them (GSM8K: one 8-shot block; MMLU: its subject's 5-shot block; MT-Bench: one system prompt)."""
    from representation_study import SYSTEM_PROMPT, TEMPLATE, mmlu_shot_block

    rng = np.random.default_rng(seed)
    groups = np.asarray(data.groups).astype(str)
    outside = np.setdiff1d(np.arange(data.n_prompts), rows)
    gsm = outside[groups[outside] == "routellm/gsm8k"]
    shots = [str(data.prompts[i]) for i in rng.choice(gsm, 8, replace=False)]
    numbers = rng.integers(2, 500, size=8)
    gsm_block = "".join(
        f"Question: {q}\nAnswer: Let's think step by step. ... The answer is {n}.\n\n"
        for q, n in zip(shots, numbers, strict=True)
    )
    blocks: dict[str, str] = {}
    out = []
    for i in rows:
        group, text = groups[i], str(data.prompts[i])
        if group == "routellm/gsm8k":
            out.append(f"{gsm_block}Question: {text}\nAnswer:")
        elif group.startswith("routellm/mmlu/"):
            if group not in blocks:
                pool = outside[groups[outside] == group]
                picked = rng.choice(pool, min(5, len(pool)), replace=False)
                letters = rng.choice(list("ABCD"), size=len(picked))
                questions = [str(data.prompts[j]) for j in picked]
                blocks[group] = mmlu_shot_block(group.rsplit("/", 1)[1], questions, letters)
            out.append(blocks[group] + text)
        else:
            out.append(TEMPLATE.format(system=SYSTEM_PROMPT, prompt=text))
    return np.asarray(out, dtype=object)


def embed_as_trained(cfg: Any, data: Any, final_rows: np.ndarray, mode: str = "drop") -> np.ndarray:
    """``data``'s prompts embedded as ``router-rl train`` embeds them: the default representation, its affixes
    learned from the prompts the final policy trains on (``compose_cfg`` turns them off for the plain sets;
    ``mode``: ``drop``, ``pool``, ``center`` or ``auto`` as ``affixes.mode``, ``head`` the first tokens only, as before affixes)."""
    from omegaconf import OmegaConf

    from router_rl.representation import identical_embeddings

    embedder_cfg = OmegaConf.create(OmegaConf.to_container(cfg.embedder, resolve=True))
    embedder_cfg.representation.affixes.enabled = mode != "head"
    if mode != "head":
        embedder_cfg.representation.affixes.mode = mode
    prompts = [str(p) for p in data.prompts]
    train_prompts = [prompts[i] for i in final_rows]
    representation = T.fit_representation(embedder_cfg, train_prompts, data.quality[final_rows])
    embedder = T.make_embedder(embedder_cfg, representation=representation)
    print(f"[default_wins] {data.name}: {representation.describe()}", flush=True)
    embeddings = embedder.encode(prompts)
    n, groups = identical_embeddings(prompts, embeddings)
    print(
        f"[default_wins] {data.name}: {n} of {len(prompts)} prompts embed like a prompt with another text ({groups} groups)",
        flush=True,
    )
    return embeddings


def learners_for(cfg: Any, options: list[str]) -> dict[str, T.PolicyFactory]:
    """Report label -> factory for ``configs/policy/<option>.yaml`` (``default``: the train.yaml policy)."""
    out: dict[str, T.PolicyFactory] = {}
    for option in options:
        if option == "default":
            label = "default"

            def factory(models: list[str], dim: int, seed: int) -> Any:
                return T.make_policy(T._with_seed(cfg, seed).policy, models, dim)
        else:
            base, overrides = PREVIOUS.get(option, (option, None))
            label = option if option in PREVIOUS else T.policy_label(T.policy_option(base, None, root=cfg))

            def factory(
                models: list[str], dim: int, seed: int, base: str = base, overrides: Any = overrides
            ) -> Any:
                return T.make_policy(T.policy_option(base, overrides, root=cfg, seed=seed), models, dim)

        out[label] = factory
    return out


def run_variant(
    name: str, setup: T.Setup, cfg: Any, options: list[str], seeds: list[int], n_boot: int
) -> dict:
    t0 = time.perf_counter()
    data = setup.data
    if data.n_models == 2:
        options = [*options, *[o for o in TWO_MODEL_EXTRA if o not in options]]
    learners = learners_for(cfg, options)
    oracle = Oracle(data.quality, data.cost_usd, setup.cost_scale)
    oracle_probs = {w: oracle.probs(setup.test_rows, cost_weight=w) for w in setup.weights}
    fixed = T.yardsticks(setup, cfg)
    per_seed, stats = [], {}
    for seed in seeds:
        probs, st, _ = T.cross_fit(setup, learners, cfg=cfg, seed=seed, bar=None, tracker=_NoTracker())
        stats = stats or st
        per_seed.append(probs)
        print(f"[default_wins] {name}: seed {seed} done at {time.perf_counter() - t0:.0f}s", flush=True)

    def report_of(p: dict, max_cost: float | None) -> dict:
        return build_report(
            data, setup.test_rows, {**p, **fixed}, scheme=setup.scheme, split=setup.split_label,
            cost_scale=setup.cost_scale, oracle_probs=oracle_probs, max_cost=max_cost,
        )  # fmt: skip

    reports = [report_of(p, None) for p in per_seed]
    largest = max(r["max_cost_usd"] for r in reports)
    reports = [report_of(p, largest) for p in per_seed]
    report = aggregate_reports(reports, seeds)
    cfg.evaluation.bootstrap.n_boot = int(n_boot)
    report["comparisons"] = T.compare_with_rivals(per_seed, fixed, "default", setup, largest, cfg)
    report["train"] = {n: T._mean_stats(s) for n, s in stats.items()}
    report["wall_seconds"] = time.perf_counter() - t0
    report["default_policy"] = json.loads(json.dumps(dict(cfg.policy), default=str))
    return report


def contrast(names: list[str], setups: dict[str, T.Setup], cfg: Any, seeds: list[int], n_boot: int) -> dict:
    """The default policy on each of ``names`` (the same prompts, read another way: FEWSHOT variants), each
    against the first: AIQ per seed and the paired bootstrap interval over prompts of the difference."""
    from router_rl.evaluation import aggregate_reports, paired_comparisons

    learners = learners_for(cfg, ["default"])
    first = setups[names[0]]
    per_seed: list[dict] = [{} for _ in seeds]
    aiq: dict[str, list[float]] = {}
    for name in names:
        setup = setups[name]
        for i, seed in enumerate(seeds):
            probs, _, _ = T.cross_fit(setup, learners, cfg=cfg, seed=seed, bar=None, tracker=_NoTracker())
            per_seed[i][name] = probs["default"]
        print(f"[default_wins] contrast {name}: {len(seeds)} seeds done", flush=True)
    reports = [
        build_report(
            first.data,
            first.test_rows,
            p,
            scheme=first.scheme,
            split=first.split_label,
            cost_scale=first.cost_scale,
            oracle_probs=None,
            max_cost=None,
        )  # fmt: skip
        for p in per_seed
    ]
    largest = max(r["max_cost_usd"] for r in reports)
    rows = first.test_rows
    out: dict[str, Any] = {"seeds": seeds, "n_boot": n_boot, "reference": names[0], "modes": {}}
    agg = aggregate_reports(reports, seeds)
    for name in names:
        aiq[name] = [r["policies"][name]["aiq"] for r in reports]
        pol = agg["policies"][name]
        entry: dict[str, Any] = {
            "aiq": pol["aiq"],
            "aiq_sd": pol.get("aiq_std", 0.0),
            "aiq_per_seed": aiq[name],
        }
        if name != names[0]:
            cmp = paired_comparisons(
                [{name: p[name], names[0]: p[names[0]]} for p in per_seed], name,
                first.data.quality[rows], first.data.cost_usd[rows],
                max_cost=largest, n_boot=n_boot, level=0.95, seed=0,
            )  # fmt: skip
            entry["minus_reference"] = cmp["rivals"][names[0]]
        out["modes"][name] = entry
    return out


def contrast_markdown(result: dict) -> str:
    ref = result["reference"]
    lines = [
        "# The default policy on the same prompts read another way (`default_wins.py --contrast`)\n",
        f"Seeds {result['seeds']}; paired bootstrap over prompts ({result['n_boot']} resamples, 95%) of each "
        f"mode's AIQ minus `{ref}`'s, the same folds and draws.\n",
        "| variant (affixes mode) | AIQ (sd) | per seed | minus reference [95% CI] |",
        "|---|---:|---|---:|",
    ]
    for name, e in result["modes"].items():
        seeds = ", ".join(f"{v:.4f}" for v in e["aiq_per_seed"])
        if "minus_reference" in e:
            c = e["minus_reference"]
            diff = f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
        else:
            diff = "reference"
        lines.append(
            f"| {name} ({FEWSHOT.get(name, 'drop')}) | {e['aiq']:.4f} ({e['aiq_sd']:.4f}) | {seeds} | {diff} |"
        )
    return "\n".join(lines) + "\n"


def fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "never"
    return f"{100 * v:.1f}%" if pct else f"{v:.4f}"


def markdown(results: dict[str, dict]) -> str:
    lines = [
        "# Does the default policy win? (`experiments/default_wins.py`)",
        "",
        "Per dataset or variant: AIQ mean (sd over seeds); the least cost reaching 95% / 97% of the best single "
        "model's quality as a share of its cost, at a cost weight that ran (`ran`) and on the hull (mixing two "
        "weights); the paired bootstrap 95% interval over prompts of AIQ(default) - AIQ(router). Settings were "
        "tuned on `arena` only; every other dataset is held out.",
    ]
    for name, rep in results.items():
        best = rep["best_single_model"]
        lines += [
            "",
            f"## {name}: {rep['n_prompts']} test prompts ({rep['scheme']}), {len(rep['models'])} models, "
            f"seeds {rep['seeds']}",
            "",
            "| router | AIQ (sd) | 95% ran | 95% hull | 97% ran | 97% hull | default - router [95% CI] |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        rivals = (rep.get("comparisons") or {}).get("rivals", {})
        order = sorted(rep["policies"], key=lambda n: -rep["policies"][n]["aiq"])
        for router in order:
            e = rep["policies"][router]
            sd = f" ({e['aiq_std']:.4f})" if e.get("aiq_std") is not None and "aiq_std" in e else ""
            vs = rivals.get(router)
            ci = f"{vs['diff']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}]" if vs else "-"
            lines.append(
                f"| {router} | {fmt(e['aiq'])}{sd} | {fmt(e['cost_fraction_at_95'], True)} | "
                f"{fmt(e['cost_fraction_at_95_hull'], True)} | {fmt(e['cost_fraction_at_97'], True)} | "
                f"{fmt(e['cost_fraction_at_97_hull'], True)} | {ci} |"
            )
        o = rep["oracle"]
        lines += [
            f"| zero router (hull of the single models) | {fmt(rep['zero_router']['aiq'])} | | | | | |",
            f"| best single: {best} | quality {rep['models'][best]['quality']:.3f} at "
            f"${rep['models'][best]['cost_usd']:.5f} | | | | | |",
            f"| oracle | quality {o['quality']:.3f} at {100 * o['cost_usd'] / rep['models'][best]['cost_usd']:.1f}% "
            "of the best model's cost | | | | | |",
        ]
        if "two_model" in rep:
            lines += [
                "",
                "| router | APGR (RouteLLM's code) | CPT(50%) | CPT(80%) | shares reached |",
                "|---|---:|---:|---:|---:|",
            ]
            for router, e in rep["two_model"]["routers"].items():
                rng = f"{100 * e.get('share_min', 0):.0f}-{100 * e.get('share_max', 1):.0f}%"
                lines.append(
                    f"| {router} | {e['apgr']:.3f} | {fmt(e['cpt50'], True)} | {fmt(e['cpt80'], True)} | {rng} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument(
        "--policies",
        nargs="+",
        default=ZOO,
        help="options of configs/policy/ (default: train.yaml's), or a named variant of the default: "
        + ", ".join(PREVIOUS),
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for every variant")
    parser.add_argument("--out", type=Path, default=RESULTS / "default_wins.json")
    parser.add_argument(
        "--contrast",
        action="store_true",
        help="only the default policy on each variant (the same prompts read another way), each against the first",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.contrast:
        bundled = {n.split("-")[0] for n in args.variants}
        if len(bundled) != 1:
            parser.error("--contrast compares variants of one bundled dataset")
        cfg = compose_cfg(bundled.pop(), list(args.override))
        base = T.prepare(cfg)
        setups = {n: base if n in BUNDLED else variant_setup(n, base, cfg) for n in args.variants}
        result = contrast(list(args.variants), setups, cfg, list(args.seeds), args.n_boot)
        args.out.write_text(json.dumps(json.loads(to_json(result)), indent=1))
        args.out.with_suffix(".md").write_text(contrast_markdown(result))
        print(contrast_markdown(result), flush=True)
        return
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    bases: dict[str, tuple[Any, T.Setup]] = {}
    for name in args.variants:
        bundled = name.split("-")[0]
        if bundled not in bases:
            cfg = compose_cfg(bundled, list(args.override))
            bases[bundled] = (cfg, T.prepare(cfg))
        cfg, base = bases[bundled]
        setup = base if name in BUNDLED else variant_setup(name, base, cfg)
        report = run_variant(name, setup, cfg, list(args.policies), list(args.seeds), args.n_boot)
        results[name] = json.loads(to_json(report))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        args.out.with_suffix(".md").write_text(markdown(results))
        print(markdown({name: results[name]}), flush=True)


if __name__ == "__main__":
    main()
