"""The ``router-rl`` command: ``router-rl <command> [hydra overrides | options]``.

``train`` is a Hydra application (``--help``, ``--cfg job``, ``-m`` sweeps); ``route`` and ``export`` are small
argparse commands. User mistakes (bad data, a bad artifact, a bad option) end with a one-line error and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

CONFIG_MODULE = "pkg://router_rl.configs"
USAGE = """usage: router-rl <command> [args]

commands:
  train    train a router from bandit feedback in the simulator, evaluate, log to MLflow, export
           (Hydra: router-rl train --help, --cfg job, -m key=a,b)
  eval     compare policies and exported artifacts on a dataset over seeds and cost weights (Hydra)
  export   write the serving artifact from an MLflow run or a checkpoint
  route    print one routing decision of an exported artifact for a prompt
  serve    run the router as an HTTP service (OpenAI-compatible, behind your gateway); serve export-log
  collect  call candidate models on your prompts, have an LLM judge grade them, write an outcomes table
  learn    continue the deployed policy from the decision log, evaluate it off-policy, promote on evidence
  promote  point a registry alias at a version (rollback NAME ALIAS: back to the previous one)

run `router-rl <command> --help` for a command's options."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from router_rl.export import ExportError
    from router_rl.serve.artifact import ArtifactError
    from router_rl.types import DataError

    return (DataError, ArtifactError, ExportError, FileNotFoundError)


def _fail(err: BaseException, where: str = "") -> int:
    message = str(err)
    full_key = getattr(err, "full_key", None)
    if full_key and type(err).__name__ == "MissingMandatoryValue":
        message = f"{message.splitlines()[0]}; set it on the command line: {full_key}=..."
    print(f"router-rl: error: {where + ': ' if where else ''}{message}", file=sys.stderr)
    return 2


def _hydra_command(name: str, config_name: str, args: Sequence[str]) -> int:
    """Run the Hydra application ``config_name`` (``train`` or ``eval``) with ``args`` as its command line."""
    if "--help" in args or "-h" in args:  # every key with its documentation (Hydra's own help drops comments)
        from router_rl.config_help import render_help

        print(render_help(config_name, [a for a in args if "=" in a and not a.startswith("-")]))
        return 0
    import hydra
    from omegaconf import DictConfig
    from omegaconf.errors import MissingMandatoryValue

    errors = _user_errors()
    failed: list[str] = []  # jobs of a sweep that ended with a user error (this process's launcher)

    @hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name=config_name)
    def _main(cfg: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from router_rl.training import evaluate, train

        job = train if config_name == "train" else evaluate
        hydra_cfg = HydraConfig.get()
        try:
            report = job(cfg, hydra_cfg.runtime.output_dir)
        except (*errors, ValueError, MissingMandatoryValue) as err:
            if os.environ.get("ROUTER_RL_DEBUG"):  # the full traceback, for developers
                raise
            if hydra_cfg.mode == RunMode.MULTIRUN:  # one job's error: say so, let the sweep finish
                overrides = " ".join(hydra_cfg.overrides.task)
                failed.append(overrides)
                _fail(err, where=f"job {hydra_cfg.job.num} ({overrides})")
                return None
            sys.exit(_fail(err))
        # the objective a Hydra sweeper would maximise: the trained policy's AIQ
        return report["policies"].get(report["policy"], {}).get("aiq")

    saved = sys.argv
    sys.argv = [f"router-rl {name}", *args]
    try:
        _main()
    except BaseException as exc:  # a sweep that raised or was stopped: its MLflow parent run ends with it
        from router_rl.tracking import end_open_sweeps, is_interruption

        end_open_sweeps("KILLED" if is_interruption(exc) else "FAILED", reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        sys.argv = saved
    if failed:
        print(
            f"router-rl: error: {len(failed)} job(s) of the sweep failed: {'; '.join(failed)}",
            file=sys.stderr,
        )
        return 2
    return 0


def _route(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="router-rl route", description="One routing decision, printed.")
    parser.add_argument("artifact", help="exported artifact directory (manifest.json + weights.safetensors)")
    parser.add_argument("prompt", help="the prompt to route")
    parser.add_argument("--cost-weight", type=float, default=None, help="trade-off; default: the artifact's")
    parser.add_argument("--candidates", nargs="+", default=None, help="restrict the choice to these models")
    parser.add_argument(
        "--max-cost-usd", type=float, default=None, help="exclude models predicted to cost more"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument(
        "--encoder-backend",
        default="auto",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        help="auto: ONNX Runtime on CPU (exported once, the vectors of torch to 1e-6), torch on cuda",
    )
    parser.add_argument("--json", action="store_true", help="print the full decision as JSON")
    opts = parser.parse_args(args)
    from router_rl.serve.router import Router

    try:
        router = Router(opts.artifact, device=opts.device, encoder_backend=opts.encoder_backend)
        decision = router.decide(
            [opts.prompt],
            cost_weight=opts.cost_weight,
            candidates=opts.candidates,
            max_cost_usd=opts.max_cost_usd,
        )[0]
    except (*_user_errors(), ValueError) as err:
        return _fail(err)
    # the trade-off decided at, as POST /v1/route answers it
    cost_weight = opts.cost_weight
    if cost_weight is None:
        cost_weight = float(router.artifact.manifest.get("default_cost_weight", 0.0))
    if opts.json:
        print(json.dumps({**decision.to_dict(), "cost_weight": cost_weight}, indent=2))
        return 0
    print(
        f"model: {decision.model}   (policy {decision.policy_version}, propensity {decision.propensity:.2f}, "
        f"cost weight {cost_weight:g})"
    )
    ranked = sorted(decision.scores.items(), key=lambda kv: -float("inf") if kv[1] is None else -kv[1])
    print(f"{'model':<40}{'score':>9}{'quality':>9}{'cost_usd':>11}")
    for model, score in ranked:
        est = decision.estimates[model]
        shown = "excluded" if score is None else f"{score:9.4f}"
        print(f"{model:<40}{shown:>9}{est['quality']:9.3f}{est['cost_usd']:11.5f}")
    return 0


def _export(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="router-rl export", description="Write the serving artifact.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help="MLflow run whose logged checkpoint to export")
    source.add_argument("--checkpoint", help="checkpoint directory written by `router-rl train`")
    parser.add_argument("--out", required=True, help="artifact directory to write (replaced if present)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    opts = parser.parse_args(args)
    import os

    from router_rl.export import export_checkpoint, export_run

    try:
        if opts.checkpoint:
            out = export_checkpoint(opts.checkpoint, opts.out)
        else:
            uri = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
            out = export_run(opts.run_id, opts.out, tracking_uri=uri)
    except _user_errors() as err:
        return _fail(err)
    print(f"artifact written to {out}")
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    return f"router-rl: {category.__name__}: {message}\n"


# Commands implemented in their own modules: name -> "module:function" taking the argument list, returning
# the exit status. One line each, so features can add their command without touching the rest of this file.
EXTERNAL_COMMANDS: dict[str, str] = {
    "collect": "router_rl.collect:main",
    "serve": "router_rl.serve.cli:main",
    "learn": "router_rl.learn:main",
    "promote": "router_rl.learn:promote_main",
    "rollback": "router_rl.learn:rollback_main",
}


def _external(spec: str, args: Sequence[str]) -> int:
    import importlib

    module, _, func = spec.partition(":")
    return int(getattr(importlib.import_module(module), func)(list(args)) or 0)


# what `router-rl train`, `eval` and `export` import beyond the serving install (pip install "router-rl[train]")
TRAIN_MODULES = ("hydra", "mlflow", "gymnasium", "matplotlib")
TRAIN_COMMANDS = ("train", "eval", "export")


def _missing_train_extra(command: str) -> int | None:
    """Exit status 2 with one line when the training extra is not installed (the serving install), else None."""
    import importlib.util

    missing = [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    print(
        f"router-rl: error: `router-rl {command}` needs the training extra ({', '.join(missing)} not installed): "
        'pip install "router-rl[train]"',
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _format_warning
    from router_rl.progress import quiet_library_bars

    quiet_library_bars()  # before the libraries that draw bars are imported
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in TRAIN_COMMANDS and (status := _missing_train_extra(command)) is not None:
        return status
    if command in ("train", "eval"):
        return _hydra_command(command, command, rest)
    if command == "route":
        return _route(rest)
    if command == "export":
        return _export(rest)
    if command == "collect" and ("--help" in rest or "-h" in rest):  # without importing the HTTP clients
        from router_rl.config_help import render_help

        print(render_help("collect", [a for a in rest if "=" in a and not a.startswith("-")]))
        return 0
    if command in EXTERNAL_COMMANDS:
        return _external(EXTERNAL_COMMANDS[command], rest)
    print(f"router-rl: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
