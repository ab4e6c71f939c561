"""The offline default encoder, batching and the on-disk cache."""

from __future__ import annotations

import numpy as np

from router_rl.embeddings import DEFAULT_ENCODER, Embedder, EmbeddingCache


def test_default_encoder_offline_normalised_and_cached(tmp_path) -> None:
    texts = ["What is 2 + 2?", "Write a haiku about routers.", "What is 2 + 2?"]
    first = Embedder(DEFAULT_ENCODER, device="cpu", batch_size=2, cache_dir=tmp_path)
    x = first.encode(texts)
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[0], x[2])
    assert first.n_encoded == 2  # the duplicate text is embedded once
    # a new process-like embedder reads the cache and encodes nothing
    second = Embedder(DEFAULT_ENCODER, device="cpu", cache_dir=tmp_path)
    y = second.encode(texts)
    assert second.n_encoded == 0
    np.testing.assert_array_equal(x, y)
    # semantics survive: similar questions are closer than unrelated ones
    z = second.encode(["What is two plus two?", "Describe the French revolution."])
    assert float(z[0] @ x[0]) > float(z[1] @ x[0])


def test_uncached_names_the_distinct_texts_the_encoder_would_run_on(tmp_path) -> None:
    embedder = Embedder(DEFAULT_ENCODER, device="cpu", cache_dir=tmp_path)
    embedder.encode(["seen"])
    assert embedder.uncached(["new", "seen", "other", "new"]) == ["new", "other"]
    assert Embedder(DEFAULT_ENCODER, device="cpu", cache_dir=None).uncached(["a", "a", "b"]) == ["a", "b"]
    assert embedder.n_encoded == 1  # asking encodes nothing


def test_cache_is_keyed_by_encoder_settings(tmp_path) -> None:
    a = Embedder(DEFAULT_ENCODER, device="cpu", max_seq_length=256, cache_dir=tmp_path)
    b = Embedder(DEFAULT_ENCODER, device="cpu", max_seq_length=8, cache_dir=tmp_path)
    assert a.encoder_id != b.encoder_id
    long_text = ["routing " * 50 + "the end is different from the start"]
    a.encode(long_text)
    b.encode(long_text)
    assert b.n_encoded == 1  # not served from a's entry


def test_cache_roundtrip(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    vec = np.arange(4, dtype=np.float32).reshape(2, 2)
    cache.put_many("enc", ["a", "b"], vec)
    got = cache.get_many("enc", ["a", "b", "c"])
    assert len(got) == 2
    assert cache.get_many("other", ["a"]) == {}
