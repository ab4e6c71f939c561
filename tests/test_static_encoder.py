"""Static (token-lookup) encoders: any sentence-transformers StaticEmbedding model, the distilled one, and
its artifact round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_rl.embeddings import DEFAULT_ENCODER, Embedder, resolve_encoder
from router_rl.representation import Representation
from router_rl.static_encoder import StaticEncoder, distill, is_static_model

TEXTS = ["What is 2 + 2?", "Write a haiku about routers.", "Übersetze: le routeur 🙂", ""]


def tiny_static_model(root: Path, dim: int = 16) -> Path:
    """A sentence-transformers StaticEmbedding model: MiniLM's tokenizer and random token vectors."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(resolve_encoder(DEFAULT_ENCODER)) / "tokenizer.json"))
    tokenizer.no_truncation()
    weights = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), dim)).astype(np.float32)
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=weights), Normalize()])
    model.save(str(root))
    return root


@pytest.fixture(scope="module")
def static_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_static_model(tmp_path_factory.mktemp("static-model"))


def test_a_static_sentence_transformer_encodes_instead_of_crashing(static_model: Path) -> None:
    """Was: AttributeError: property 'max_seq_length' of 'StaticEmbedding' object has no setter."""
    assert is_static_model(static_model) and not is_static_model(resolve_encoder(DEFAULT_ENCODER))
    torch_path = Embedder(str(static_model), backend="torch", device="cpu", max_seq_length=256)
    x = torch_path.encode(TEXTS)
    assert x.shape == (4, 16) and torch_path.kind == "static" and torch_path.max_seq_length is None
    np.testing.assert_allclose(np.linalg.norm(x[:3], axis=1), 1.0, atol=1e-6)
    assert not x[3].any()  # no tokens: the zero vector
    numpy_path = Embedder(str(static_model), backend="auto", device="cpu")
    assert numpy_path.backend == "static"
    np.testing.assert_allclose(numpy_path.encode(TEXTS), x, atol=1e-6)
    # a static model reads every token: prompts that differ only after token 256 differ
    long = ["route " * 600 + "the end", "route " * 600 + "a different end"]
    for embedder in (torch_path, numpy_path):
        y = embedder.encode(long)
        assert not np.allclose(y[0], y[1])


def test_a_static_model_through_the_st_config(static_model: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from router_rl.training import make_embedder

    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["embedder=st", f"embedder.model={static_model}"])
    embedder = make_embedder(cfg.embedder, show_progress=False)
    assert embedder.encode(TEXTS[:2]).shape == (2, 16)


@pytest.mark.parametrize(("backend", "message"), [("onnx", "cannot run a static model")])
def test_a_static_model_refuses_the_onnx_backends(static_model: Path, backend: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Embedder(str(static_model), backend=backend, device="cpu")


def test_static_numpy_encoder_matches_an_embedding_bag_mean(static_model: Path) -> None:
    enc = StaticEncoder.load(static_model)
    ids = enc.token_ids(TEXTS[:2])
    want = np.stack([enc.vectors[i].mean(axis=0) for i in ids])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.encode(TEXTS[:2]), want, atol=1e-6)
    # sums per piece, repeated tokens counted, empty pieces zero
    pieces = [[1, 2, 3], [], [4, 4], list(range(5, 40))]
    want = np.stack([enc.vectors[p].sum(axis=0) if p else np.zeros(enc.dim) for p in pieces])
    np.testing.assert_allclose(enc.sums(pieces), want, atol=1e-5)
    many = pieces * 200  # past the gather path: the sparse product, and numpy's blocks without scipy
    np.testing.assert_allclose(enc.sums(many), np.tile(want, (200, 1)), atol=1e-5)
    lengths = np.array([len(p) for p in many])
    flat = np.array([t for p in many for t in p])
    np.testing.assert_allclose(enc._block_sums(flat, lengths, block=37), np.tile(want, (200, 1)), atol=1e-5)


# ------------------------------------------------------------------------------------------ distillation
@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("static-cache")
    path, encoder_id = distill(DEFAULT_ENCODER, dim=32, max_vocab=1400, cache_dir=cache, device="cpu")
    return {"cache": cache, "path": path, "id": encoder_id}


def test_distillation_builds_a_sentence_transformers_model_once(distilled: dict, monkeypatch) -> None:
    from sentence_transformers import SentenceTransformer

    import router_rl.static_encoder as static_encoder

    path = distilled["path"]
    sidecar = json.loads((path / "router_rl_static.json").read_text())
    assert sidecar["settings"]["dim"] == 32 and sidecar["id"] == distilled["id"]
    assert distilled["id"].startswith(f"static-{DEFAULT_ENCODER}-d32-")
    enc = StaticEncoder.load(path)
    assert enc.vectors.shape[1] == 32
    assert np.array_equal(enc.vectors.astype(np.float16).astype(np.float32), enc.vectors)  # float16-exact
    assert enc.vectors[1996].any() and not enc.vectors[5000:].any()  # "the" distilled; rare tokens: zero
    st = SentenceTransformer(str(path), device="cpu")  # a regular sentence-transformers model
    texts = ["the of and", "in to was"]  # frequent words: inside the distilled 1,400 tokens
    np.testing.assert_allclose(st.encode(texts, normalize_embeddings=True), enc.encode(texts), atol=1e-6)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the source model ran again")

    monkeypatch.setattr(static_encoder, "token_vectors", no_rebuild)
    again = distill(DEFAULT_ENCODER, dim=32, max_vocab=1400, cache_dir=distilled["cache"], device="cpu")
    assert again == (path, distilled["id"])  # cached
    # new settings: a new model and id, from the source's cached token vectors (no forward pass)
    other, other_id = distill(
        DEFAULT_ENCODER, dim=16, max_vocab=1400, cache_dir=distilled["cache"], device="cpu"
    )
    assert other != path and other_id != distilled["id"] and StaticEncoder.load(other).dim == 16


def test_distilled_token_vectors_keep_meaning(distilled: dict) -> None:
    """Words close in MiniLM's space stay closer than unrelated ones."""
    enc = StaticEncoder.load(distilled["path"])
    x = enc.encode(["he", "she", "and"])
    assert float(x[0] @ x[1]) > float(x[0] @ x[2])


def test_static_artifact_carries_its_encoder_and_serves_what_training_encoded(
    distilled: dict, tmp_path: Path
) -> None:
    from router_rl.export import export_artifact
    from router_rl.policies.linucb import LinUCB
    from router_rl.serve.artifact import ArtifactError, load_artifact
    from router_rl.serve.router import Router

    rep = Representation(prefixes=("You are a helpful assistant. Answer briefly. ",))
    trained = Embedder(str(distilled["path"]), name=distilled["id"], backend="static", representation=rep)
    texts = [rep.prefixes[0] + t for t in ("the of and", "in to was", "he she it", "is for on")]
    x = trained.encode(texts)
    policy = LinUCB(models=["small", "large"], dim=x.shape[1])
    rng = np.random.default_rng(0)
    policy.update(
        x, rng.integers(0, 2, len(x)), rng.uniform(size=len(x)), rng.uniform(size=len(x)), np.zeros(len(x))
    )
    models = [
        {"name": "small", "usd_per_1m_input": 0.1, "usd_per_1m_output": 0.2},
        {"name": "large", "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0},
    ]
    context = {"catalog_models": models, "embedder": trained.manifest(x.shape[1]), "cost_scale": 1.0,
               "cost_weight": 0.1, "latency_weight": 0.0}  # fmt: skip
    out = export_artifact(policy, context, tmp_path / "artifact")
    manifest = load_artifact(out).manifest
    block = manifest["embedder"]
    assert "location" not in block and block["kind"] == "static" and "max_seq_length" not in block
    assert set(block["files"].values()) <= set(manifest["files"])  # sealed and hashed with the rest
    router = Router(out, device="cpu", encoder_backend="auto")
    assert router.embedder.backend == "static" and router.embedder.model_name == distilled["id"]
    np.testing.assert_array_equal(router.embed(texts), x)  # the very same vectors
    limits = [{"cost_weight": w} for w in (0.0, 0.1, 5.0, 0.3)]
    batched, _ = router.decide_requests(texts, limits)
    for text, lim, want in zip(texts, limits, batched, strict=True):  # decided inline on the event loop
        got, row = router.decide_inline(text, lim)
        assert got.model == want.model  # one row through the head instead of four: float32 rounding only
        assert got.scores == pytest.approx(want.scores, rel=1e-5, abs=1e-5)
        np.testing.assert_array_equal(row[0], router.embed([text])[0])
    assert router.decide_inline("x" * 9000, limits[0]) is None  # long prompts go to the batcher's thread
    with pytest.raises(ArtifactError, match="static token lookup: it runs on encoder backend auto or static"):
        Router(out, device="cpu", encoder_backend="onnx")
    weights = out / block["files"]["weights"]
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 3] ^= 0xFF  # one token's vector changed
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="does not match"):
        Router(out, device="cpu")


def test_embedder_static_config_distils_and_trains(tmp_path: Path, monkeypatch) -> None:
    from hydra import compose, initialize_config_module

    from router_rl.training import make_embedder

    overrides = [
        "embedder=static",
        "embedder.distill.max_vocab=1100",
        "embedder.distill.dim=8",
        "embedder.distill.fit=null",  # the plain distillation: the default fit runs MiniLM over a corpus
        f"embedder.cache_dir={tmp_path}",
    ]
    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    embedder = make_embedder(cfg.embedder, show_progress=False)
    assert (
        embedder.kind == "static"
        and embedder.backend == "static"
        and embedder.model_name.startswith("static-")
    )
    assert embedder.encode(["the of and"]).shape == (1, 8)
    assert (tmp_path / "static").is_dir()


# ------------------------------------------------------------------------------------------ fitting
def test_the_fits_source_embeddings_report_progress_on_uncached_work_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Minutes of MiniLM work before a fit say so, in a log too; the chunked encoding is the one-call one's."""
    import router_rl.static_encoder as se

    monkeypatch.setattr(se, "PROGRESS_FROM", 4)
    monkeypatch.setenv("ROUTER_RL_PROGRESS", "log")
    spec = {"target_max_seq_length": 64}
    texts = [f"question {i}: how do routers pick a model for prompt {i}?" for i in range(40)]
    kwargs = {"device": "cpu", "cache_dir": tmp_path / "a", "show_progress": False}
    got = se.source_embeddings(DEFAULT_ENCODER, texts, spec, **kwargs)
    err = capsys.readouterr().err
    assert (
        f"embeddings to fit on: {len(texts)} texts to go" in err and f"{len(texts)}/{len(texts)} texts" in err
    )
    want = Embedder(DEFAULT_ENCODER, device="cpu", max_seq_length=64, cache_dir=None).encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    again = se.source_embeddings(DEFAULT_ENCODER, [*texts, "one new text"], spec, **kwargs)
    assert "embeddings to fit on" not in capsys.readouterr().err  # 1 uncached text: below PROGRESS_FROM
    np.testing.assert_array_equal(again[: len(texts)], got)


def test_fitting_reduces_the_held_out_regression_loss_and_is_deterministic() -> None:
    """Targets from a hidden token table: the fit moves the start's sentence embeddings towards them."""
    from router_rl.static_encoder import fit_tokens

    rng = np.random.default_rng(0)
    vocab, dim, target_dim = 60, 8, 12
    hidden = rng.normal(size=(vocab, target_dim)).astype(np.float32)
    start = rng.normal(size=(vocab, dim)).astype(np.float32)
    start[-5:] = 0.0  # tokens kept out of the fit (as special tokens are)
    trainable = np.ones(vocab, dtype=bool)
    trainable[-5:] = False
    pieces = [list(rng.integers(0, vocab - 5, size=int(rng.integers(2, 9)))) for _ in range(600)]
    targets = np.stack([hidden[p].mean(axis=0) for p in pieces])
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    kwargs = {"epochs": 15, "lr": 3e-2, "batch_size": 32, "holdout": 0.2, "seed": 1, "trainable": trainable}
    table, report = fit_tokens(start, pieces, targets, **kwargs)
    assert table.shape == (vocab, dim) and table.dtype == np.float32 and not table[-5:].any()
    assert report["n_heldout"] == 120 and report["n_train"] == 480
    assert report["heldout_loss"] < 0.5 * report["heldout_loss_distilled"]
    assert report["train_loss"] < report["train_loss_distilled"]
    assert len(report["heldout_curve"]) == 15
    again, report_again = fit_tokens(start, pieces, targets, **kwargs)
    np.testing.assert_array_equal(again, table)
    assert report_again == report
    with pytest.raises(ValueError, match="target embeddings"):
        fit_tokens(start, pieces, targets[:-1])


def test_extra_pairs_train_only_with_their_training_parent_and_the_losses_stay_on_whole_texts() -> None:
    """Crops of held-out texts stay out of the fit; the split, the held-out set and its loss before the fit
    do not move when pairs are added, and the pairs change the fitted table."""
    from router_rl.static_encoder import fit_tokens

    rng, start, pieces, embed = _toy_corpus(seed=0, n=200)

    crops = [p[: len(p) // 2] for p in pieces]
    kwargs = {"epochs": 3, "lr": 1e-2, "batch_size": 32, "holdout": 0.25, "seed": 3}
    base, plain = fit_tokens(start, pieces, embed(pieces), **kwargs)
    extra = (crops, embed(crops), np.arange(200))
    table, report = fit_tokens(start, pieces, embed(pieces), extra=extra, **kwargs)
    assert report["n_train"] == 150 and report["n_heldout"] == 50 and report["n_train_extra"] == 150
    assert report["heldout_loss_distilled"] == plain["heldout_loss_distilled"]
    assert "n_train_extra" not in plain and not np.allclose(table, base)
    # the crops of held-out texts are never fitted on: garbage targets for them change nothing
    held = ~np.isin(np.arange(200), _train_rows(pieces, kwargs))
    assert held.sum() == 50
    noisy = embed(crops).copy()
    noisy[held] = rng.normal(size=(int(held.sum()), 12))
    again, _ = fit_tokens(start, pieces, embed(pieces), extra=(crops, noisy, np.arange(200)), **kwargs)
    np.testing.assert_array_equal(again, table)
    with pytest.raises(ValueError, match="parent indices"):
        fit_tokens(start, pieces, embed(pieces), extra=(crops, embed(crops), np.arange(200) + 1))
    with pytest.raises(ValueError, match="extra pairs"):
        fit_tokens(start, pieces, embed(pieces), extra=(crops[:-1], embed(crops), np.arange(200)))


def test_members_average_tables_fitted_on_one_split_and_member_zero_is_the_single_fit() -> None:
    """members=3: one split and start, three batch orders and crop sets; the averaged table's held-out loss
    is reported beside each member's, member 0 is the single fit exactly, and the fit is deterministic."""
    from router_rl.static_encoder import fit_tokens

    rng, start, pieces, embed = _toy_corpus(seed=2, n=300)

    targets = embed(pieces) + rng.normal(scale=0.3, size=(300, 12))  # noisy: the draws disagree
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    kwargs = {"epochs": 4, "lr": 3e-2, "batch_size": 16, "holdout": 0.2, "seed": 5}
    single, one = fit_tokens(start, pieces, targets, **kwargs)
    crop_sets = [([p[k : k + 3] for p in pieces], embed([p[k : k + 3] for p in pieces]), np.arange(300))
                 for k in range(3)]  # fmt: skip
    table, report = fit_tokens(start, pieces, targets, members=3, extra=crop_sets, **kwargs)
    assert report["members"] == 3 and len(report["member_heldout_loss"]) == 3
    assert (
        report["n_heldout"] == one["n_heldout"]
        and report["heldout_loss_distilled"] == one["heldout_loss_distilled"]
    )
    assert report["n_train_extra"] == 240 and len(set(report["member_heldout_loss"])) == 3
    bagged, bag = fit_tokens(start, pieces, targets, members=3, **kwargs)
    assert bag["member_heldout_loss"][0] == one["heldout_loss_fitted"]  # member 0: the single fit
    assert len(set(bag["member_heldout_loss"])) == 3  # the others drew other batch orders
    assert bag["heldout_loss_fitted"] < np.mean(bag["member_heldout_loss"])  # averaging cancels draw noise
    assert not np.allclose(bagged, single) and not np.allclose(bagged, table)
    again, bag_again = fit_tokens(start, pieces, targets, members=3, **kwargs)
    np.testing.assert_array_equal(again, bagged)
    assert bag_again == bag and "members" not in one
    with pytest.raises(ValueError, match="2 sets for 3 members"):
        fit_tokens(start, pieces, targets, members=3, extra=crop_sets[:2], **kwargs)
    with pytest.raises(ValueError, match="members must be >= 1"):
        fit_tokens(start, pieces, targets, members=0, **kwargs)


def _toy_corpus(seed: int, n: int) -> tuple:
    """A 50-token vocabulary, a random (50, 8) start table, ``n`` texts of 4-9 tokens, and ``embed``: unit
    means of a hidden (50, 12) table, the targets a fit should reach; with the generator, for more draws."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(50, 12)).astype(np.float32)
    start = rng.normal(size=(50, 8)).astype(np.float32)
    pieces = [list(rng.integers(0, 50, size=int(rng.integers(4, 10)))) for _ in range(n)]

    def embed(ps: list) -> np.ndarray:
        y = np.stack([hidden[p].mean(axis=0) for p in ps])
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    return rng, start, pieces, embed


def _train_rows(pieces: list, kwargs: dict) -> np.ndarray:
    """The training texts fit_tokens draws (its seeded split, repeated here)."""
    order = np.random.default_rng(kwargs["seed"]).permutation(len(pieces))
    return order[int(round(kwargs["holdout"] * len(pieces))) :]


def test_crops_are_word_aligned_spans_of_their_text_and_deterministic() -> None:
    from tokenizers import Tokenizer

    from router_rl.static_encoder import CROP_MIN_TOKENS, crop_texts

    tokenizer = Tokenizer.from_file(str(Path(resolve_encoder(DEFAULT_ENCODER)) / "tokenizer.json"))
    tokenizer.no_truncation()
    if tokenizer.padding is not None:
        with pytest.raises(ValueError, match="no_padding"):
            crop_texts(tokenizer, ["a b c d e f g h i j"], 1, budget=256, seed=0)
    tokenizer.no_padding()
    texts = [
        "Routers decide which language model answers a prompt, trading quality against unbelievable costs.",
        "Too short.",
        "Tokenization splits uncharacteristically long words into pieces; crops must keep them whole.",
    ]
    crops, parents = crop_texts(tokenizer, texts, 5, budget=256, seed=0)
    assert 1 not in parents.tolist() and set(parents.tolist()) == {0, 2}  # 3 tokens: under 2 * minimum
    assert parents.tolist() == sorted(parents.tolist()) and len(crops) <= 10
    for crop, parent in zip(crops, parents.tolist(), strict=True):
        text = texts[parent]
        at = text.find(crop)
        assert at >= 0 and crop != text  # a contiguous span, never the whole text
        # widened to whole words: the span neither starts nor ends inside a word
        assert at == 0 or not (text[at - 1].isalnum() and text[at].isalnum())
        end = at + len(crop)
        assert end == len(text) or not (text[end - 1].isalnum() and text[end].isalnum())
        assert len(tokenizer.encode(crop, add_special_tokens=False).ids) >= CROP_MIN_TOKENS
    assert crop_texts(tokenizer, texts, 5, budget=256, seed=0)[0] == crops
    assert crop_texts(tokenizer, texts, 5, budget=256, seed=1)[0] != crops
    # a text's first crops do not depend on how many are drawn
    fewer, fewer_parents = crop_texts(tokenizer, texts, 2, budget=256, seed=0)
    for parent in (0, 2):
        mine = [c for c, q in zip(crops, parents.tolist(), strict=True) if q == parent]
        assert [c for c, q in zip(fewer, fewer_parents.tolist(), strict=True) if q == parent] == mine[:2]
    # crops come from the tokens the source reads: within the first 8 tokens of the text
    head, _ = crop_texts(tokenizer, texts[:1], 5, budget=8, seed=0)
    enc = tokenizer.encode(texts[0], add_special_tokens=False)
    limit = max(
        end for (_, end), word in zip(enc.offsets, enc.word_ids, strict=True) if word == enc.word_ids[7]
    )
    assert head and all(texts[0].find(c) + len(c) <= limit for c in head)
    assert crop_texts(tokenizer, texts, 0, budget=256, seed=0)[0] == []


def test_fit_settings_name_the_corpus_and_stay_out_of_the_plain_key(tmp_path: Path) -> None:
    from router_rl.static_encoder import distill_settings, fit_settings

    corpus = tmp_path / "prompts.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"prompt number {i}"}) + "\n" for i in range(12)))
    assert "fit" not in distill_settings() and fit_settings(None) is None
    assert fit_settings({"enabled": False, "corpus": str(corpus)}) is None
    spec = distill_settings(fit={"corpus": str(corpus), "epochs": 2})["fit"]
    assert spec["epochs"] == 2 and len(spec["corpus_sha256"]) == 64
    corpus.write_text(corpus.read_text() + json.dumps({"prompt": "one more"}) + "\n")
    assert fit_settings({"corpus": str(corpus), "epochs": 2})["corpus_sha256"] != spec["corpus_sha256"]
    with pytest.raises(ValueError, match="unknown static fit settings"):
        fit_settings({"corpus": str(corpus), "epoch": 2})
    with pytest.raises(ValueError, match="anchor"):
        fit_settings({"corpus": str(corpus), "anchor": -1})
    assert len(fit_settings({})["corpus_sha256"]) == 64  # the bundled RouteLLM prompts by default
    # crops join the key only when on: the fits made before they existed keep their ids
    assert fit_settings({"corpus": str(corpus), "crops": 0}) == fit_settings({"corpus": str(corpus)})
    assert "crops" not in fit_settings({"corpus": str(corpus)})
    with_crops = distill_settings(fit={"corpus": str(corpus), "crops": 2})
    assert with_crops["fit"]["crops"] == 2 and with_crops != distill_settings(fit={"corpus": str(corpus)})
    with pytest.raises(ValueError, match="crops must be >= 0"):
        fit_settings({"corpus": str(corpus), "crops": -1})
    # so do members (tables averaged) when more than one
    assert fit_settings({"corpus": str(corpus), "members": 1}) == fit_settings({"corpus": str(corpus)})
    bag = distill_settings(fit={"corpus": str(corpus), "crops": 2, "members": 3})
    assert bag["fit"]["members"] == 3 and bag != with_crops
    with pytest.raises(ValueError, match="members must be >= 1"):
        fit_settings({"corpus": str(corpus), "members": 0})


WORDS = [
    "the",
    "of",
    "and",
    "in",
    "to",
    "was",
    "he",
    "she",
    "it",
    "is",
    "for",
    "on",
    "as",
    "with",
    "by",
    "his",
    "her",
    "at",
    "from",
    "that",
    "were",
    "which",
    "are",
    "this",
]


def test_distillation_with_a_fit_builds_its_own_cached_model(
    distilled: dict, tmp_path: Path, monkeypatch
) -> None:
    from sentence_transformers import SentenceTransformer

    import router_rl.static_encoder as static_encoder

    rng = np.random.default_rng(0)
    corpus = tmp_path / "prompts.jsonl"
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(80)]
    corpus.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in lines))
    fit = {"corpus": str(corpus), "epochs": 3, "lr": 1e-3, "batch_size": 16}
    kwargs = {"dim": 32, "max_vocab": 1400, "cache_dir": distilled["cache"], "device": "cpu"}
    path, encoder_id = distill(DEFAULT_ENCODER, fit=fit, **kwargs)
    assert path != distilled["path"] and encoder_id != distilled["id"]
    sidecar = json.loads((path / "router_rl_static.json").read_text())
    assert sidecar["settings"]["fit"]["epochs"] == 3 and sidecar["id"] == encoder_id
    report = sidecar["fit"]
    assert report["n_heldout"] == 8 and report["train_loss"] < report["train_loss_distilled"]
    enc = StaticEncoder.load(path)
    assert enc.vectors.shape[1] == 32 and not enc.vectors[5000:].any()  # tokens outside the fit stay zero
    assert np.array_equal(enc.vectors.astype(np.float16).astype(np.float32), enc.vectors)
    plain = StaticEncoder.load(distilled["path"])
    assert not np.allclose(enc.encode(lines[:4]), plain.encode(lines[:4]), atol=1e-3)
    st = SentenceTransformer(str(path), device="cpu")
    np.testing.assert_allclose(
        st.encode(lines[:4], normalize_embeddings=True), enc.encode(lines[:4]), atol=1e-6
    )

    def no_refit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(static_encoder, "fit_tokens", no_refit)
    assert distill(DEFAULT_ENCODER, fit=fit, **kwargs) == (path, encoder_id)  # cached
    monkeypatch.undo()
    # with crops: another encoder, fitted on the prompts and their crops (of the training prompts only)
    cropped, cropped_id = distill(DEFAULT_ENCODER, fit={**fit, "crops": 1}, **kwargs)
    assert cropped_id not in (encoder_id, distilled["id"])
    report = json.loads((cropped / "router_rl_static.json").read_text())["fit"]
    assert report["n_train"] == 72 and 0 < report["n_train_extra"] <= 72
