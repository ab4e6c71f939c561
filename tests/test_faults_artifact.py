"""Tampered, corrupted and hostile artifacts (issue 11): each is refused with a one-line ArtifactError naming the
file and the field, and nothing outside the artifact directory is ever opened; through `load_artifact`,
`router-rl route`, `router-rl serve` and `/admin/reload`."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_cli
from safetensors.numpy import load_file, save_file

from router_rl.serve.artifact import ArtifactError, load_artifact, write_linear_artifact
from router_rl.serve.manifest import KEY_ENV, MAX_ARTIFACT_BYTES, seal_manifest
from router_rl.serve.testing import toy_artifact

MODELS = ["big", "mid", "small"]
SECRET = b"root:x:0:0:outside the artifact\n"


@pytest.fixture()
def art(tmp_path: Path) -> Path:
    """A valid small artifact at tmp/artifact, and tmp/outside/secret: a file no check may open."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    return toy_artifact(
        tmp_path / "artifact", MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[0.01, 0.002, 0.0001], dim=8
    )


def manifest(p: Path) -> dict:
    return json.loads((p / "manifest.json").read_text())


def write(p: Path, m: object, *, seal: bool) -> None:
    if seal:
        m = seal_manifest(m)  # type: ignore[arg-type]
    (p / "manifest.json").write_text(json.dumps(m))


def edit(change: Callable[[dict], None], *, seal: bool = True) -> Callable[[Path], None]:
    """Change the manifest; ``seal``: recompute manifest_sha256 as a careful forger (or a buggy writer) would."""

    def damage(p: Path) -> None:
        m = manifest(p)
        change(m)
        write(p, m, seal=seal)

    return damage


def setitem(*path: object) -> Callable[[dict], None]:
    """Set ``manifest[k1][k2]... = value`` for ``path = (k1, k2, ..., value)``."""
    *keys, value = path

    def change(m: dict) -> None:
        target = m
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return change


def swap_names(m: dict) -> None:
    m["models"][0]["name"], m["models"][2]["name"] = m["models"][2]["name"], m["models"][0]["name"]


def list_file(name: str, data: bytes) -> Callable[[dict], None]:
    """List ``name`` in files with the true sha256 and size of ``data`` (what a forger would write)."""
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return lambda m: m["files"].__setitem__(name, entry)


def raw_manifest(text: str) -> Callable[[Path], None]:
    return lambda p: (p / "manifest.json").write_text(text)


def literal(field: str, token: str) -> Callable[[Path], None]:
    """Put a JSON token (NaN, Infinity, 1e999) in the manifest text, as json.dumps or a hand edit does."""

    def damage(p: Path) -> None:
        m = manifest(p)
        m[field] = "@@"
        (p / "manifest.json").write_text(json.dumps(m).replace('"@@"', token))

    return damage


def symlink_weights(p: Path) -> None:
    """weights.safetensors replaced by a symlink to an identical copy outside: the sha256 still matches."""
    outside = p.parent / "outside" / "weights.safetensors"
    shutil.copy(p / "weights.safetensors", outside)
    (p / "weights.safetensors").unlink()
    (p / "weights.safetensors").symlink_to(outside)


def symlink_dir(p: Path) -> None:
    (p / "sub").symlink_to(p.parent / "outside", target_is_directory=True)
    edit(list_file("sub/secret", SECRET))(p)


def symlink_manifest(p: Path) -> None:
    outside = p.parent / "outside" / "manifest.json"
    shutil.copy(p / "manifest.json", outside)
    (p / "manifest.json").unlink()
    (p / "manifest.json").symlink_to(outside)


def huge_sparse_file(p: Path) -> None:
    """A 30 GiB file (sparse: no disk used) with its true size recorded: refused before any hashing."""
    with open(p / "huge.bin", "wb") as fh:
        fh.truncate(30 << 30)
    edit(lambda m: m["files"].__setitem__("huge.bin", {"sha256": "0" * 64, "size": 30 << 30}))(p)


def grown_file(p: Path) -> None:
    with open(p / "weights.safetensors", "ab") as fh:
        fh.write(b"\0" * 1024)


def fifo(p: Path) -> None:
    os.mkfifo(p / "pipe")  # opening it for reading would block forever
    edit(lambda m: m["files"].__setitem__("pipe", {"sha256": "0" * 64, "size": 0}))(p)


def weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the weights and record their true sha256 and size, so only the load-time checks remain."""

    def damage(p: Path) -> None:
        tensors = load_file(str(p / "weights.safetensors"))
        change(tensors)
        save_file(tensors, str(p / "weights.safetensors"))
        data = (p / "weights.safetensors").read_bytes()
        edit(list_file("weights.safetensors", data))(p)

    return damage


def nan_at(name: str) -> Callable[[dict], None]:
    return lambda t: t[name].__setitem__((0, 0), np.nan)


def old_format(p: Path) -> None:
    """An artifact from before integrity checks: files maps names to bare sha256 strings, no seal."""
    m = manifest(p)
    m["files"] = {k: v["sha256"] for k, v in m["files"].items()}
    del m["manifest_sha256"]
    write(p, m, seal=False)


TAMPERED = [
    # the manifest's content is sealed: a naive edit of any field is caught
    ("models swapped", edit(swap_names, seal=False), r"does not match manifest_sha256 .*modified"),
    ("model renamed", edit(setitem("models", 1, "name", "gpt-5"), seal=False), r"manifest was modified"),
    (
        "price changed",
        edit(setitem("models", 0, "usd_per_1m_input", 0.0), seal=False),
        r"manifest was modified",
    ),
    ("training run changed", edit(setitem("training_run_id", "other"), seal=False), r"manifest was modified"),
    ("new field added", edit(setitem("prompt", {"strip": "x"}), seal=False), r"manifest was modified"),
    ("no seal", edit(lambda m: m.pop("manifest_sha256"), seal=False), r"no 'manifest_sha256' .*re-export"),
    (
        "seal not hex",
        edit(setitem("manifest_sha256", "abc"), seal=False),
        r"manifest_sha256 is 'abc'; expected 64",
    ),
    ("older artifact", old_format, r"no 'manifest_sha256' field.*re-export it"),
    # strict JSON: non-finite numbers and ambiguous keys never get to a field check
    ("cost weight NaN", literal("default_cost_weight", "NaN"), r"manifest\.json: holds NaN; expected finite"),
    ("latency weight Infinity", literal("latency_weight", "Infinity"), r"holds Infinity; expected finite"),
    ("overflowing number", literal("latency_weight", "1e999"), r"holds the number 1e999, which overflows"),
    ("duplicate key", raw_manifest('{"format": "a", "format": "b"}'), r"holds the key 'format' twice"),
    ("bare number", raw_manifest("42"), r"manifest\.json: holds a JSON number; expected an object"),
    ("list", raw_manifest("[1, 2]"), r"holds a JSON array; expected an object"),
    ("string", raw_manifest('"manifest"'), r"holds a JSON string; expected an object"),
    ("not UTF-8", lambda p: (p / "manifest.json").write_bytes(b"\xff\xfe{}"), r"not valid JSON"),
    # format first
    (
        "format_version a string",
        edit(setitem("format_version", "1")),
        r"format_version is '1' \(a JSON string\); expected the integer 1",
    ),
    (
        "format_version true",
        edit(setitem("format_version", True)),
        r"format_version is True .*expected the integer 1",
    ),
    ("format_version 2", edit(setitem("format_version", 2)), r"format_version 2 is not supported"),
    # every field's type and range, even under a valid seal
    (
        "cost weight negative",
        edit(setitem("default_cost_weight", -1)),
        r"default_cost_weight is -1, expected a finite number >= 0",
    ),
    (
        "latency weight a string",
        edit(setitem("latency_weight", "0.5")),
        r"latency_weight is '0\.5', expected a finite number >= 0",
    ),
    (
        "price negative",
        edit(setitem("models", 1, "usd_per_1m_output", -2)),
        r"models\[1\] \(mid\) has usd_per_1m_output=-2",
    ),
    (
        "price a string",
        edit(setitem("models", 0, "usd_per_1m_input", "cheap")),
        r"models\[0\] \(big\) has usd_per_1m_input='cheap'",
    ),
    (
        "ttft negative",
        edit(setitem("models", 0, "ttft_s", -1.0)),
        r"has ttft_s=-1\.0, expected a finite number >= 0 or null",
    ),
    (
        "throughput zero",
        edit(setitem("models", 2, "output_tokens_per_s", 0)),
        r"has output_tokens_per_s=0, expected a finite number > 0",
    ),
    ("models a dict", edit(setitem("models", {"big": {}})), r"models is a JSON object; expected a list"),
    (
        "one model",
        edit(lambda m: m.__setitem__("models", m["models"][:1])),
        r"models lists 1 model\(s\); a router needs at least 2",
    ),
    (
        "model name twice",
        edit(setitem("models", 1, "name", "big")),
        r"models lists a name twice \(\['big'\]\)",
    ),
    (
        "max_seq_length abc",
        edit(setitem("embedder", "max_seq_length", "abc")),
        r"embedder\.max_seq_length is 'abc'; expected a positive integer",
    ),
    ("max_seq_length -1", edit(setitem("embedder", "max_seq_length", -1)), r"embedder\.max_seq_length is -1"),
    (
        "dim a string",
        edit(setitem("embedder", "dim", "8")),
        r"embedder\.dim is '8'; expected a positive integer",
    ),
    (
        "embedder id empty",
        edit(setitem("embedder", "id", " ")),
        r"embedder must be an object with a non-empty string 'id'",
    ),
    (
        "cost scale zero",
        edit(setitem("normalisation", "cost_scale", 0)),
        r"normalisation\.cost_scale is 0, expected a finite number > 0",
    ),
    ("policy kind unknown", edit(setitem("policy_kind", "mlp")), r"policy_kind 'mlp' is unknown"),
    (
        "files a string",
        edit(setitem("files", "weights.safetensors")),
        r"files is a JSON string; expected an object mapping",
    ),
    (
        "files value a string",
        edit(setitem("files", "weights.safetensors", "0" * 64)),
        r"files\['weights\.safetensors'\] is a JSON string; expected .*sha256",
    ),
    (
        "files value a number",
        edit(setitem("files", "weights.safetensors", 7)),
        r"files\['weights\.safetensors'\] is a JSON number",
    ),
    (
        "size a string",
        edit(setitem("files", "weights.safetensors", "size", "9k")),
        r"files\['weights\.safetensors'\]\.size is '9k'",
    ),
    (
        "no weights listed",
        edit(lambda m: m["files"].__setitem__("other", m["files"].pop("weights.safetensors"))),
        r"files has no weights\.safetensors",
    ),
    # paths stay inside the directory; nothing big is hashed
    (
        "parent path",
        edit(list_file("../../../../../../../../etc/passwd", SECRET)),
        r"files names '\.\./\.\./.*'; expected a relative path inside",
    ),
    ("relative escape", edit(list_file("../outside/secret", SECRET)), r"files names '\.\./outside/secret'"),
    (
        "absolute path",
        lambda p: edit(list_file(str(p.parent / "outside" / "secret"), SECRET))(p),
        r"files names '/.*secret'; expected a relative path",
    ),
    ("dot part", edit(list_file("./weights.safetensors", SECRET)), r"files names '\./weights"),
    ("backslash", edit(list_file("..\\outside\\secret", SECRET)), r"expected a relative path inside"),
    (
        "weights symlinked outside",
        symlink_weights,
        r"weights\.safetensors is a symlink; artifact files must be regular",
    ),
    ("directory symlinked outside", symlink_dir, r"sub is a symlink"),
    ("manifest symlinked outside", symlink_manifest, r"manifest\.json: not a regular file"),
    ("30 GiB file", huge_sparse_file, rf"files add up to \d+ bytes; expected at most {MAX_ARTIFACT_BYTES}"),
    ("file grew", grown_file, r"weights\.safetensors: \d+ bytes, the manifest records \d+"),
    ("a fifo", fifo, r"pipe is not a regular file"),
    (
        "listed file missing",
        edit(list_file("calibration.json", b"{}")),
        r"file calibration\.json listed in the manifest is missing",
    ),
    (
        "weights garbage",
        lambda p: (p / "weights.safetensors").write_bytes(b"garbage"),
        r"bytes, the manifest records",
    ),
    # the weights: finite, the right shapes, with their hash and size matching
    ("NaN weight", weights(nan_at("theta_cost")), r"tensor 'theta_cost' holds 1 NaN or infinite value\(s\)"),
    (
        "infinite weight",
        weights(lambda t: t["theta_quality"].__setitem__((1, 2), np.inf)),
        r"'theta_quality' holds 1 NaN",
    ),
    (
        "wrong shape",
        weights(lambda t: t.__setitem__("theta_latency", t["theta_latency"][:2])),
        r"'theta_latency' has shape \(2, 9\), expected \(3, 9\)",
    ),
    (
        "integer weights",
        weights(lambda t: t.__setitem__("theta_cost", t["theta_cost"].astype(np.int32))),
        r"'theta_cost' has dtype torch\.int32",
    ),
    ("tensor missing", weights(lambda t: t.pop("theta_quality")), r"tensor 'theta_quality' missing"),
]


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened through os.open, io.open or open while a test runs (torch imported beforehand)."""
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    paths: list[str] = []
    real_os_open, real_io_open = os.open, io.open

    def os_open(path, *args, **kwargs):
        paths.append(os.path.abspath(os.fspath(path)))
        return real_os_open(path, *args, **kwargs)

    def io_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            paths.append(os.path.abspath(os.fspath(file)))
        return real_io_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    return paths


@pytest.mark.parametrize(("damage", "message"), [c[1:] for c in TAMPERED], ids=[c[0] for c in TAMPERED])
def test_tampered_artifact_is_refused_in_one_line_without_opening_outside(
    art: Path, damage: Callable[[Path], None], message: str, opened: list[str]
) -> None:
    load_artifact(art, device="cpu")  # valid before the damage
    damage(art)
    opened.clear()
    with pytest.raises(ArtifactError, match=message) as err:
        load_artifact(art, device="cpu")
    assert "\n" not in str(err.value) and str(art.resolve()) in str(err.value)
    outside = art.parent.resolve() / "outside"
    assert all(Path(p).resolve().is_relative_to(art.resolve()) for p in opened), opened
    assert not any(Path(p).resolve().is_relative_to(outside) for p in opened)


def test_the_open_recorder_sees_a_file_outside(art: Path, opened: list[str]) -> None:
    """The recorder behind the table catches an open outside the directory (so its assertion can fail)."""
    (art.parent / "outside" / "secret").read_bytes()
    assert str((art.parent / "outside" / "secret").resolve()) in opened


def test_version_changes_with_any_manifest_field_or_weight(art: Path) -> None:
    v0 = load_artifact(art, device="cpu").version
    edit(setitem("models", 0, "usd_per_1m_input", 1.0))(art)
    v1 = load_artifact(art, device="cpu").version
    edit(setitem("latency_weight", 0.25))(art)
    v2 = load_artifact(art, device="cpu").version
    weights(lambda t: t["theta_quality"].__setitem__((0, 0), 0.5))(art)
    v3 = load_artifact(art, device="cpu").version
    assert len({v0, v1, v2, v3}) == 4 and all(len(v) == 12 for v in (v0, v1, v2, v3))
    assert v3 == manifest(art)["manifest_sha256"][:12]


def test_unknown_fields_are_kept_and_sealed(art: Path) -> None:
    """A field this router-rl does not know (another version's prompt block, say) loads, under the seal."""
    edit(setitem("prompt", {"strip_prefix": "Q: ", "windows": 2}))(art)
    assert load_artifact(art, device="cpu").manifest["prompt"] == {"strip_prefix": "Q: ", "windows": 2}
    edit(setitem("prompt", "windows", 3), seal=False)(art)
    with pytest.raises(ArtifactError, match="manifest was modified"):
        load_artifact(art, device="cpu")


def test_hmac_signature_with_a_key(art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.raises(
        ArtifactError, match=rf"not signed \(manifest_hmac_sha256 missing\) and {KEY_ENV} is set"
    ):
        load_artifact(art, device="cpu")  # written without the key
    signed = toy_artifact(tmp_path / "signed", MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[1, 2, 3], dim=8)
    assert load_artifact(signed, device="cpu").manifest["manifest_hmac_sha256"]
    m = manifest(signed)
    m["models"][0]["usd_per_1m_input"] = 0.0
    resealed = seal_manifest(m)  # a forger without the key recomputes the bare hash
    resealed["manifest_hmac_sha256"] = m["manifest_hmac_sha256"]
    write(signed, resealed, seal=False)
    with pytest.raises(
        ArtifactError, match=r"manifest_hmac_sha256 does not match under ROUTER_RL_ARTIFACT_KEY"
    ):
        load_artifact(signed, device="cpu")
    monkeypatch.setenv(KEY_ENV, "another")
    shutil.rmtree(signed)
    toy_artifact(signed, MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[1, 2, 3], dim=8)
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.raises(ArtifactError, match="signed with another key"):
        load_artifact(signed, device="cpu")
    monkeypatch.delenv(KEY_ENV)
    assert load_artifact(signed, device="cpu").models == MODELS  # without a key: the bare hash only


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_cost_weight": float("nan")}, r"cannot be written as strict JSON \(Out of range float"),
        ({"latency_weight": -1.0}, r"latency_weight is -1\.0, expected a finite number >= 0"),
        ({"tensors": "nan"}, r"tensor 'theta_cost' holds NaN or infinite values"),
        ({"models": "one"}, r"models lists 1 model\(s\)"),
    ],
)
def test_the_writer_refuses_what_the_loader_would(tmp_path: Path, change: dict, message: str) -> None:
    theta = np.zeros((2, 9), dtype=np.float32)
    kwargs = {
        "models": [{"name": n, "usd_per_1m_input": 1.0, "usd_per_1m_output": 1.0} for n in ("a", "b")],
        "tensors": {"theta_quality": theta, "theta_cost": theta, "theta_latency": theta},
        "embedder": {"id": "e", "dim": 8, "max_seq_length": 16},
        "cost_scale": 1.0,
        **{k: v for k, v in change.items() if k not in ("tensors", "models")},
    }
    if change.get("tensors") == "nan":
        kwargs["tensors"] = {**kwargs["tensors"], "theta_cost": np.full((2, 9), np.nan, dtype=np.float32)}
    if change.get("models") == "one":
        kwargs["models"] = kwargs["models"][:1]
        kwargs["tensors"] = {k: v[:1] for k, v in kwargs["tensors"].items()}
    with pytest.raises(ArtifactError, match=message):
        write_linear_artifact(tmp_path / "a", **kwargs)


# ----------------------------------------------------------------------------- through the commands


def test_route_cli_refuses_a_bad_artifact_in_one_line(art: Path, tmp_path: Path) -> None:
    edit(list_file("../outside/secret", SECRET))(art)
    proc = run_cli(["route", str(art), "hello", "--device", "cpu"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("router-rl: error: ") and "../outside/secret" in lines[0]


def test_unknown_encoder_offline_is_one_line_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    art = toy_artifact(
        tmp_path / "a",
        MODELS,
        quality=[0.9, 0.8, 0.5],
        cost_usd=[1, 2, 3],
        embedder="no-such-org/no-such-encoder",
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = run_cli(["route", str(art), "hello", "--device", "cpu"], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # an ONNX backend may announce its one-time export first; the error itself is one line, the last
    errors = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("router-rl: error: "), proc.stderr
    assert "encoder 'no-such-org/no-such-encoder' cannot be loaded" in errors[0]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == errors[0]

    from router_rl.serve.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([str(art), "--device", "cpu", "--log-db", str(tmp_path / "log.sqlite")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot be loaded" in errors[0] and "Traceback" not in err, err


def test_admin_reload_answers_400_for_a_bad_artifact(tmp_path: Path) -> None:
    from router_rl.serve.app import create_app
    from router_rl.serve.router import Router
    from router_rl.serve.settings import ServeSettings
    from router_rl.serve.testing import ServerThread, shared_embedder

    good = toy_artifact(tmp_path / "good", MODELS, quality=[0.9, 0.8, 0.5], cost_usd=[0.01, 0.002, 0.0001])
    router = Router(good, device="cpu", embedder=shared_embedder())
    (tmp_path / "outside").mkdir()
    bad = {}
    for name, damage in [
        ("escape", edit(list_file("../outside/secret", SECRET))),
        ("relabelled", edit(swap_names, seal=False)),
        ("nan", literal("default_cost_weight", "NaN")),
        ("number", raw_manifest("3")),
        ("nan-weights", weights(nan_at("theta_quality"))),
        ("encoder", edit(setitem("embedder", "id", str(tmp_path / "no-encoder-here")))),
    ]:
        bad[name] = tmp_path / name
        shutil.copytree(good, bad[name])
        damage(bad[name])
    settings = ServeSettings(log_db=None, device="cpu", admin_token="adm")
    admin = {"Authorization": "Bearer adm"}
    with ServerThread(create_app(router, settings)) as server:
        for name, path in bad.items():
            r = httpx.post(
                f"{server.url}/admin/reload", json={"artifact": str(path)}, headers=admin, timeout=120
            )
            message = r.json()["error"]["message"]
            assert r.status_code == 400 and "\n" not in message, (name, r.text)
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["policy_version"] == router.artifact.version  # still the good policy
        r = httpx.post(f"{server.url}/v1/route", json={"prompt": "still routing?"})
        assert r.status_code == 200 and r.json()["model"] == "big"
