"""The ONNX Runtime encoder backends: torch's vectors and decisions, the export cache, the in-memory LRU and the
settings that choose them."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from router_rl.embeddings import DEFAULT_ENCODER, Embedder, pick_backend, resolve_encoder
from router_rl.onnx_encoder import ensure_export, model_fingerprint, plan_batches
from router_rl.serve.app import create_app
from router_rl.serve.artifact import ArtifactError
from router_rl.serve.router import Router
from router_rl.serve.settings import ServeSettings, SettingsError, from_env
from router_rl.serve.testing import ServerThread, shared_embedder, toy_artifact

PROMPTS = [
    "What is 2 + 2?",
    "  Write a haiku about routers.  ",
    "",
    "Übersetze: « le routeur choisit le modèle » — 路由器选择模型 🙂",
    "def f(x):\n    return x ** 2  # explain this code and its complexity",
    "Prove every step. " * 120,  # ~480 tokens: truncated at max_seq_length
]
MODELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-exports")


@pytest.fixture(scope="module")
def onnx_embedder(onnx_cache: Path) -> Embedder:
    embedder = Embedder(DEFAULT_ENCODER, backend="onnx", device="cpu", onnx_cache_dir=onnx_cache, threads=1)
    embedder.encode(["warm-up"])  # exports once for the module
    return embedder


def test_onnx_gives_torchs_vectors_whatever_the_batch(onnx_embedder: Embedder) -> None:
    want = shared_embedder().encode(PROMPTS)
    got = onnx_embedder.encode(PROMPTS)
    assert got.shape == want.shape == (len(PROMPTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * want).sum(axis=1).min()) > 0.99999
    np.testing.assert_allclose(got, want, atol=2e-4)
    alone = np.stack([onnx_embedder.encode([p])[0] for p in PROMPTS])  # no padding at all
    np.testing.assert_allclose(alone, got, atol=1e-5)


def test_onnx_truncates_where_sentence_transformers_does(onnx_cache: Path) -> None:
    short_torch = Embedder(DEFAULT_ENCODER, device="cpu", max_seq_length=8)
    short_onnx = Embedder(
        DEFAULT_ENCODER, backend="onnx", device="cpu", max_seq_length=8, onnx_cache_dir=onnx_cache
    )
    texts = [PROMPTS[0], PROMPTS[4], PROMPTS[5]]
    got, want = short_onnx.encode(texts), short_torch.encode(texts)
    assert float((got * want).sum(axis=1).min()) > 0.99999
    full = shared_embedder().encode(texts)
    assert float(got[2] @ full[2]) < 0.999  # the long prompt really was cut at 8 tokens
    assert short_onnx.encoder_id == short_torch.encoder_id != shared_embedder().encoder_id


@pytest.mark.parametrize(
    ("lengths", "batch_size", "budget", "expected"),
    [
        ([3, 100, 10, 10, 50], 4, 60, [[1], [4], [2, 3, 0]]),  # longest first; a long text runs alone
        ([5] * 6, 4, 1000, [[0, 1, 2, 3], [4, 5]]),  # at most batch_size texts
        ([5] * 6, 64, 10, [[0, 1], [2, 3], [4, 5]]),  # at most the padded-token budget
        ([], 8, 256, []),
    ],
)
def test_batches_bound_texts_and_padded_tokens(
    lengths: list, batch_size: int, budget: int, expected: list
) -> None:
    assert plan_batches(lengths, batch_size, budget) == expected


def test_int8_is_close_to_torch_and_cached_apart(onnx_cache: Path) -> None:
    int8 = Embedder(DEFAULT_ENCODER, backend="onnx-int8", device="cpu", onnx_cache_dir=onnx_cache, threads=1)
    got, want = int8.encode(PROMPTS), shared_embedder().encode(PROMPTS)
    cosine = (got * want).sum(axis=1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.98, cosine
    assert not np.allclose(got, want, atol=1e-4)  # really quantised
    assert int8.encoder_id != shared_embedder().encoder_id  # its vectors never mix with torch's in a cache


def test_onnx_router_makes_torchs_decisions(tmp_path: Path, onnx_embedder: Embedder) -> None:
    path = toy_artifact(
        tmp_path / "artifact",
        MODELS,
        quality=[0.6, 0.55, 0.5, 0.45],
        cost_usd=[0.01, 0.004, 0.002, 0.001],
        slope=3.0,
    )
    by_torch = Router(path, device="cpu", embedder=shared_embedder())
    by_onnx = Router(path, device="cpu", embedder=onnx_embedder)
    prompts = [
        f"question {i}: {'why ' * (i % 7)}does topic {i * 37 % 11} matter?" for i in range(24)
    ] + PROMPTS
    x_torch, x_onnx = by_torch.embed(prompts), by_onnx.embed(prompts)
    chosen = set()
    for w in (0.0, 2.0, 50.0):
        want, got = (
            by_torch.decide_embedded(x_torch, cost_weight=w),
            by_onnx.decide_embedded(x_onnx, cost_weight=w),
        )
        assert [d.model for d in got] == [d.model for d in want], w
        for g, t in zip(got, want, strict=True):
            assert g.scores == pytest.approx(t.scores, abs=1e-3)
        chosen |= {d.model for d in want}
    assert len(chosen) > 1  # the prompts really lead to different choices
    with pytest.raises(ArtifactError, match="max_seq_length 128"):
        Router(path, device="cpu", embedder=onnx_embedder, max_seq_length=128)


def test_the_export_is_made_once_and_keyed_by_the_weights(onnx_embedder: Embedder, tmp_path: Path) -> None:
    resolved = resolve_encoder(DEFAULT_ENCODER)
    root = ensure_export(DEFAULT_ENCODER, resolved, onnx_embedder.onnx_cache_dir)
    stamp = (root / "model.onnx").stat().st_mtime_ns
    assert ensure_export(DEFAULT_ENCODER, resolved, onnx_embedder.onnx_cache_dir) == root
    assert (root / "model.onnx").stat().st_mtime_ns == stamp  # not exported again
    assert {"model.onnx", "tokenizer.json", "encoder.json"} <= {p.name for p in root.iterdir()}
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"old weights")
    before = model_fingerprint(str(weights))
    (weights / "model.safetensors").write_bytes(b"new weights")
    assert model_fingerprint(str(weights)) != before  # new weights, new export directory


def test_memory_cache_serves_repeats_and_evicts_the_least_recent(onnx_cache: Path) -> None:
    e = Embedder(
        DEFAULT_ENCODER, backend="onnx", device="cpu", onnx_cache_dir=onnx_cache, memory_cache_size=2
    )
    first = e.encode(["a", "b", "a"])
    assert e.n_encoded == 2 and len(e.memory_cache) == 2  # the duplicate is encoded once
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(e.encode(["a"])[0], first[0])
    assert e.n_encoded == 2 and e.memory_cache.hits == 1
    e.encode(["c"])  # evicts "b": "a" was used more recently
    e.encode(["a"])
    assert e.n_encoded == 3
    e.encode(["b"])
    assert e.n_encoded == 4


def test_route_counts_cache_hits_and_reports_the_encoder(tmp_path: Path, onnx_cache: Path) -> None:
    path = toy_artifact(
        tmp_path / "artifact", MODELS, quality=[0.6, 0.55, 0.5, 0.45], cost_usd=[0.01, 0.004, 0.002, 0.001]
    )
    embedder = Embedder(
        DEFAULT_ENCODER, backend="onnx", device="cpu", onnx_cache_dir=onnx_cache, memory_cache_size=8
    )
    router = Router(path, device="cpu", embedder=embedder)
    with ServerThread(create_app(router, ServeSettings(log_db=None))) as server:
        answers = [
            httpx.post(f"{server.url}/v1/route", json={"prompt": "same prompt"}).json() for _ in range(3)
        ]
        health = httpx.get(f"{server.url}/healthz").json()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert len({a["model"] for a in answers}) == 1 and len({a["decision_id"] for a in answers}) == 3
    assert health["encoder"]["backend"] == "onnx" and health["encoder"]["memory_cache_size"] == 8
    assert health["encoder"]["max_seq_length"] == health["encoder"]["trained_max_seq_length"] == 256
    assert 'router_rl_embedding_cache_total{result="hit"} 2.0' in metrics
    assert 'router_rl_embedding_cache_total{result="miss"} 1.0' in metrics
    assert 'backend="onnx"' in metrics


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"encoder_backend": "onnx-fp16"},
            r"encoder_backend='onnx-fp16': expected one of auto, torch, onnx, onnx-int8",
        ),
        ({"encoder_max_seq_length": -1}, "encoder_max_seq_length"),
        ({"embedding_cache_size": -5}, "embedding_cache_size"),
    ],
)
def test_bad_encoder_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServeSettings(**changes).validate()


def test_encoder_settings_from_the_environment_and_auto() -> None:
    s = from_env(
        {
            "ROUTER_RL_SERVE_ENCODER_BACKEND": "onnx-int8",
            "ROUTER_RL_SERVE_ENCODER_MAX_SEQ_LENGTH": "128",
            "ROUTER_RL_SERVE_EMBEDDING_CACHE_SIZE": "0",
        }
    ).validate()
    assert s.router_kwargs() == {
        "encoder_backend": "onnx-int8",
        "max_seq_length": 128,
        "embedding_cache_size": 0,
        "threads": s.resolved_encoder_threads(),
    }
    assert ServeSettings().router_kwargs()["max_seq_length"] is None  # the artifact's
    assert pick_backend("auto", "cpu") == "onnx" and pick_backend("auto", "cuda:0") == "torch"
    assert pick_backend("onnx-int8", "cuda") == "onnx-int8"


def test_bad_embedder_arguments_are_named(onnx_cache: Path) -> None:
    with pytest.raises(
        ValueError, match="encoder backend 'tensorrt' is unknown; expected one of torch, onnx"
    ):
        Embedder(backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="max_seq_length must be >= 1"):
        Embedder(device="cpu", max_seq_length=0)
    with pytest.raises(ValueError, match="memory_cache_size must be >= 0"):
        Embedder(device="cpu", memory_cache_size=-1)
    too_long = Embedder(backend="onnx", device="cpu", max_seq_length=1024, onnx_cache_dir=onnx_cache)
    with pytest.raises(ValueError, match=r"max_seq_length 1024 is outside 1\.\.512"):
        too_long.encode(["x"])
