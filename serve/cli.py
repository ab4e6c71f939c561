"""``router-rl serve``: run the router service, or export its decision log as logged bandit data.

    router-rl serve ARTIFACT [--host 127.0.0.1] [--port 8080] [--upstream URL | --upstreams FILE] [options]
    router-rl serve models:/NAME/VERSION ...          # an artifact registered in the MLflow Model Registry
    router-rl serve models:/NAME@ALIAS [--registry-poll-s 30]   # follows the alias: hot-reloads when it moves
    router-rl serve export-log DB OUT [--policy-version V] [--require-feedback] [--include-fallbacks]

Every option also reads ``ROUTER_RL_SERVE_<OPTION>`` from the environment (flags win). User mistakes end
with one line on stderr and exit status 2. SIGTERM and SIGINT stop gracefully (in-flight requests finish,
the decision log is flushed); SIGHUP reloads the artifact (a ``models:/NAME/alias`` follows the alias).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from router_rl.serve.settings import (
    ENV_PREFIX,
    ServeSettings,
    SettingsError,
    convert,
    from_env,
    parse_api_keys,
    read_api_keys_file,
)

REGISTRY_PREFIX = "models:/"


def resolve_artifact(source: str) -> str:
    """An artifact directory for ``source``: a directory as it is, or a ``models:/NAME/VERSION`` URI fetched
    from the MLflow Model Registry (MLflow is imported only then, and never by ``router_rl.serve``'s modules)."""
    if source.startswith(REGISTRY_PREFIX):
        from router_rl.registry import resolve_model_uri

        return str(resolve_model_uri(source))
    return source


def build_app(
    source: str, settings: ServeSettings, *, embedder: Any = None, handle_sighup: bool = True
) -> Any:
    """The service app for ``source`` (a directory or a ``models:/`` URI) as ``router-rl serve`` runs it. A
    registry alias is resolved to its version first and, with ``settings.registry_poll_s > 0``, followed."""
    from router_rl.serve.app import create_app
    from router_rl.serve.router import Router

    follow = None
    path = source
    if source.startswith(REGISTRY_PREFIX):
        from router_rl.registry import follows_a_reference, model_version_of, parse_model_uri
        from router_rl.serve.registry_watch import RegistrySource

        if follows_a_reference(source):
            name = parse_model_uri(source)[0]
            version = model_version_of(source)  # pinned now, so the version followed is the one loaded

            def pinned(v: str, name: str = name) -> str:
                return f"{REGISTRY_PREFIX}{name}/{v}"

            follow = RegistrySource(source, version, lambda: model_version_of(source), pinned)
            path = resolve_artifact(pinned(version))
        else:
            path = resolve_artifact(source)
    router = Router(path, device=settings.device, embedder=embedder, **settings.router_kwargs())
    return create_app(
        router,
        settings,
        artifact_source=source,
        resolve=resolve_artifact,
        handle_sighup=handle_sighup,
        follow=follow,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router-rl serve",
        description="Serve an exported router: /v1/route, /v1/chat/completions (OpenAI-compatible), /v1/feedback, "
        "/healthz, /metrics. Options also read ROUTER_RL_SERVE_<OPTION> environment variables.",
        epilog="router-rl serve export-log DB OUT writes the decision log as logged bandit data (.parquet, .csv, .npz).",
    )
    parser.add_argument(
        "artifact",
        help="artifact directory, or models:/NAME/VERSION or models:/NAME@ALIAS (followed) from the MLflow registry",
    )
    for f in dataclasses.fields(ServeSettings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata.get('help', '')} [env {env}]"
        if f.name == "api_keys":
            parser.add_argument(
                "--api-key",
                action="append",
                default=None,
                metavar="NAME:TOKEN",
                help=f"accept this bearer token (repeatable); {help_text}",
            )
            parser.add_argument("--api-keys-file", default=None, help="file of NAME:TOKEN lines, one per key")
            continue
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                flag, default=None, metavar=f.name.upper(), help=f"{help_text} (default {default!r})"
            )
    return parser


def settings_from(opts: argparse.Namespace, environ: dict[str, str] | None = None) -> ServeSettings:
    """Defaults, then the environment, then the flags given."""
    settings = from_env(os.environ if environ is None else environ)
    changes = {}
    for f in dataclasses.fields(ServeSettings):
        if f.name == "api_keys":
            continue
        value = getattr(opts, f.name, None)
        if value is None:
            continue
        changes[f.name] = (
            value if isinstance(value, bool) else convert(f.name, value, "--" + f.name.replace("_", "-"))
        )
    keys = dict(settings.api_keys)
    if opts.api_keys_file:
        keys.update(read_api_keys_file(opts.api_keys_file))
    for item in opts.api_key or []:
        keys.update(parse_api_keys(item, "--api-key"))
    changes["api_keys"] = keys
    try:
        return settings.replace(**changes).validate()
    except SettingsError as err:  # name the flag too, so the line says what to change
        match = re.match(r"setting (\w+)", str(err))
        if match is None or not any(f.name == match.group(1) for f in dataclasses.fields(ServeSettings)):
            raise
        name = match.group(1)
        where = "--" + name.replace("_", "-")
        env = os.environ if environ is None else environ
        if getattr(opts, name, None) is None and ENV_PREFIX + name.upper() in env:  # set there, not by a flag
            where = ENV_PREFIX + name.upper()
        raise SettingsError(f"{err} [{where}]") from None


def _export_log(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="router-rl serve export-log",
        description="Write a decision log as logged bandit data: one row per decision with action, propensity, "
        "scores, feedback quality and cost (.parquet or .csv), or the arrays (.npz).",
    )
    parser.add_argument(
        "db", help="the decision log the server wrote (--log-db: a sqlite path or URL, or postgresql://...)"
    )
    parser.add_argument("out", help="output file: .parquet, .csv or .npz")
    parser.add_argument("--policy-version", default=None, help="keep only this policy version's decisions")
    parser.add_argument("--require-feedback", action="store_true", help="keep only decisions with feedback")
    parser.add_argument(
        "--include-fallbacks", action="store_true", help="keep decisions answered by a fallback model too"
    )
    opts = parser.parse_args(args)
    from router_rl.serve.decision_log import export_logged_data, read_logged_bandit_data

    try:
        filters = {
            "policy_version": opts.policy_version,
            "require_feedback": opts.require_feedback,
            "include_fallbacks": opts.include_fallbacks,
        }
        out = export_logged_data(opts.db, opts.out, **filters)
        data = read_logged_bandit_data(opts.db, **filters)
    except (FileNotFoundError, ValueError, ConnectionError, ImportError) as err:
        return _fail(err)
    print(
        f"{len(data)} decisions ({int(data.has_feedback.sum())} with feedback, {data.n_actions} models) -> {out}"
    )
    replicas = sorted({str(r) for r in data.replica if r}) if data.replica is not None else []
    if len(replicas) > 1:  # several replicas wrote this log: who decided how much
        counts = {r: int((data.replica == r).sum()) for r in replicas}
        print("by replica: " + ", ".join(f"{r} {n}" for r, n in counts.items()))
    return 0


def _fail(err: BaseException) -> int:
    print(f"router-rl: error: {err}", file=sys.stderr)
    return 2


def main(args: Sequence[str]) -> int:
    args = list(args)
    if args and args[0] == "export-log":
        return _export_log(args[1:])
    opts = _parser().parse_args(args)
    from router_rl.serve.artifact import ArtifactError
    from router_rl.serve.upstreams import UpstreamConfigError

    try:
        settings = settings_from(opts)
        import uvicorn

        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        app = build_app(opts.artifact, settings)
    except (
        ArtifactError,
        SettingsError,
        UpstreamConfigError,
        FileNotFoundError,
        RuntimeError,
        ConnectionError,  # a postgresql:// decision log that cannot be reached
        ImportError,  # ... or without psycopg installed
    ) as err:
        return _fail(err)
    from router_rl.serve.server import uvicorn_options

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(max(1, round(settings.graceful_timeout_s))),
        lifespan="on",
        **uvicorn_options(settings),  # deadlines on request heads and idle keep-alive connections
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal; a planned stop exits with status 0
    signal.signal(signal.SIGTERM, _exit_zero)
    server.run()
    return 0 if server.started else 1


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)
