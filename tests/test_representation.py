"""Prompt representation: shared affixes learned and removed, token windows, the manifest block, the cache key,
the identical-embedding warning, and serving applying exactly what training did."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from router_rl.embeddings import DEFAULT_ENCODER, Embedder, EmbeddingWarning
from router_rl.representation import (
    Representation,
    RepresentationError,
    identical_embeddings,
    learn_affixes,
    shared_prefixes,
)

SYSTEM = (
    "You are the support assistant of a bicycle shop. Answer politely, in short paragraphs, and never promise "
    "delivery dates. Recommend a visit to the workshop for any repair that touches brakes or steering. "
    "Prices are in euros and include VAT. The customer's message follows.\n\nCustomer: "
)
QUESTIONS = [
    "How much is a new chain for a city bike?",
    "Do you sell helmets for children?",
    "My rear brake squeaks, what should I do?",
    "Can I return a saddle I bought last week?",
    "What are your opening hours on Saturday?",
    "Is a carbon frame worth it for commuting?",
    "Which tyre pressure do you recommend for gravel?",
    "Do you repair electric bikes of other brands?",
]


def templated(questions=QUESTIONS) -> list[str]:
    return [SYSTEM + q for q in questions]


# ------------------------------------------------------------------------------------------ learning
def test_learns_the_shared_system_prompt_and_cuts_at_a_word_boundary() -> None:
    texts = templated() + ["a plain question that shares nothing", "another unrelated request here"]
    prefixes, suffixes, record = learn_affixes(texts, min_share=0.05, min_prompts=5, min_chars=100)
    assert prefixes == [SYSTEM]  # up to "Customer: ": the questions' own first words stay
    assert suffixes == []
    assert record["prompts_stripped"] == len(QUESTIONS) and record["prefix_counts"] == [len(QUESTIONS)]
    rep = Representation(prefixes=tuple(prefixes))
    assert [rep.remove_affixes(t) for t in templated()] == QUESTIONS
    assert (
        rep.remove_affixes("a plain question that shares nothing") == "a plain question that shares nothing"
    )


def test_a_prefix_shared_by_too_few_or_too_short_is_not_learned() -> None:
    texts = templated(QUESTIONS[:4]) + [f"unrelated prompt number {i}" for i in range(6)]
    assert learn_affixes(texts, min_prompts=5, min_chars=100)[0] == []  # 4 < 5 prompts
    assert learn_affixes(templated(), min_prompts=5, min_chars=len(SYSTEM) + 1)[0] == []  # too short
    # a common opening of plain prompts ("Write a ...") is far below any template length
    plain = [f"Write a {w} about routers" for w in ("poem", "story", "song", "limerick", "haiku", "essay")]
    prefixes, suffixes, _ = learn_affixes(plain, min_prompts=2, min_chars=50)
    assert prefixes == [] and suffixes == []


def test_nested_templates_are_learned_per_cluster() -> None:
    """One system prompt, then one of two few-shot blocks: each block's prompts lose both."""
    shots = {
        "math": "Q: 2 + 3? A: 5\n\nQ: 7 - 4? A: 3\n\nQ: 6 * 2? A: 12\n\nQ: 9 / 3? A: 3\n\nQ: 5 + 5? A: 10\n\n",
        "capitals": "Q: France? A: Paris\n\nQ: Peru? A: Lima\n\nQ: Kenya? A: Nairobi\n\nQ: Japan? A: Tokyo\n\n",
    }
    items = ["Mars?", "10 - 1?", "Chad?", "Oslo?", "8 + 8?", "Cuba?"]
    texts = [SYSTEM + block + f"Q: {item} A:" for block in shots.values() for item in items]
    prefixes, _, _ = learn_affixes(texts, min_prompts=5, min_chars=40)
    assert {SYSTEM + block + "Q: " for block in shots.values()} <= set(prefixes)
    rep = Representation(prefixes=tuple(prefixes))
    assert [rep.remove_affixes(t) for t in texts] == [f"{item} A:" for item in items] * 2


def test_a_longer_shared_opening_inside_a_template_is_not_a_new_template() -> None:
    """Five of eight templated prompts start "Which of the following": that is content, not a template."""
    qs = [f"Which of the following {w} is right?" for w in ("answer", "option", "claim", "rule", "fact")]
    texts = templated(qs + QUESTIONS[:3])
    prefixes, _, _ = learn_affixes(texts, min_prompts=5, min_chars=100)
    assert prefixes == [SYSTEM]


def test_suffixes_are_learned_from_the_end() -> None:
    tail = (
        "\n\nAnswer in one short paragraph, cite the shop's return policy when it applies, and end with a"
        " friendly greeting from the team."
    )
    texts = [q + tail for q in QUESTIONS]
    prefixes, suffixes, _ = learn_affixes(texts, min_prompts=5, min_chars=60)
    assert prefixes == [] and suffixes == [tail]
    assert Representation(suffixes=tuple(suffixes)).remove_affixes(texts[0]) == QUESTIONS[0]


def test_strip_takes_the_longest_prefix_and_keeps_a_prompt_that_is_only_the_template() -> None:
    rep = Representation(prefixes=("You are ", SYSTEM))
    assert rep.prefixes == (SYSTEM, "You are ")  # longest first
    assert rep.remove_affixes(SYSTEM + "hello") == "hello"
    assert rep.remove_affixes("You are kind") == "kind"
    assert rep.remove_affixes(SYSTEM) == SYSTEM and rep.remove_affixes(SYSTEM + "   ") == SYSTEM + "   "


def test_shared_prefixes_scale_to_thousands_of_prompts() -> None:
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"])
    texts = [SYSTEM + " ".join(rng.choice(words, 12)) for _ in range(3000)]
    texts += [" ".join(rng.choice(words, 12)) for _ in range(3000)]
    found = shared_prefixes(texts, min_count=150, min_chars=100)
    assert [p for p, _ in found] == [SYSTEM] and found[0][1] == 3000


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize(
    ("rep", "ids", "budget", "want"),
    [
        (Representation(), list(range(10)), 4, [[0, 1, 2, 3]]),
        (Representation(), list(range(10)), None, [list(range(10))]),
        (
            Representation(window="head_tail", head_tokens=3, tail_tokens=2),
            list(range(10)),
            8,
            [[0, 1, 2, 8, 9]],
        ),
        (Representation(window="head_tail", head_tokens=3, tail_tokens=2), [0, 1, 2, 3], 8, [[0, 1, 2, 3]]),
        (Representation(window="head_tail", head_tokens=3, tail_tokens=0), list(range(10)), 8, [[0, 1, 2]]),
        (
            Representation(window="chunks", chunk_tokens=4),
            list(range(10)),
            8,
            [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]],
        ),
        (
            Representation(window="chunks", chunk_tokens=4),
            list(range(10)),
            3,
            [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]],
        ),
        (
            Representation(window="chunks", chunk_tokens=2, max_chunks=3),
            list(range(10)),
            8,
            [[0, 1], [2, 3], [8, 9]],
        ),
        (Representation(window="chunks", chunk_tokens=2), [], 8, [[]]),
    ],
)
def test_token_windows(
    rep: Representation, ids: list[int], budget: int | None, want: list[list[int]]
) -> None:
    assert rep.pieces(ids, budget) == want


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": "tail"}, "window 'tail' is unknown"),
        ({"window": "head_tail", "head_tokens": 0}, "head_tokens >= 1"),
        ({"window": "chunks", "chunk_tokens": 0}, "chunk_tokens >= 1"),
        ({"window": "chunks", "chunk_tokens": 8, "max_chunks": 0}, "max_chunks >= 1"),
    ],
)
def test_bad_window_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(RepresentationError, match=message):
        Representation(**kwargs)


def test_head_tail_wider_than_the_encoder_is_refused() -> None:
    with pytest.raises(RepresentationError, match="exceed the encoder's 254 tokens"):
        Representation(window="head_tail", head_tokens=200, tail_tokens=100).pieces(list(range(400)), 254)


# ------------------------------------------------------------------------------------------ manifest
def test_manifest_round_trip_and_fingerprint() -> None:
    rep = Representation(
        prefixes=(SYSTEM,), suffixes=("\nAnswer:",), window="head_tail", head_tokens=128, tail_tokens=126,
        learned={"prompts": 8},
    )  # fmt: skip
    block = json.loads(json.dumps(rep.to_manifest()))
    back = Representation.from_manifest(block)
    assert back == rep and back.fingerprint == rep.fingerprint and back.learned == {"prompts": 8}
    assert Representation.from_manifest(None) == Representation() and Representation().is_plain
    # every field that changes the encoder's input changes the fingerprint; the learning record does not
    others = [
        Representation(prefixes=(SYSTEM + "x",), suffixes=("\nAnswer:",), window="head_tail", head_tokens=128, tail_tokens=126),
        Representation(prefixes=(SYSTEM,), window="head_tail", head_tokens=128, tail_tokens=126),
        Representation(prefixes=(SYSTEM,), suffixes=("\nAnswer:",), window="head_tail", head_tokens=64, tail_tokens=190),
        Representation(prefixes=(SYSTEM,), suffixes=("\nAnswer:",), window="chunks", chunk_tokens=254),
    ]  # fmt: skip
    assert len({rep.fingerprint, *(o.fingerprint for o in others)}) == 5
    assert Representation(**{**rep.__dict__, "learned": {}}).fingerprint == rep.fingerprint


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ([], "must be an object"),
        ({"window": "head", "version": 99}, "version 99 is not supported"),
        ({"window": "head", "prefixes": "abc"}, "prefixes must be a list of non-empty strings"),
        ({"window": "head", "prefixes": [""]}, "prefixes must be a list of non-empty strings"),
        ({"window": "head", "suffixes": [3]}, "suffixes must be a list of non-empty strings"),
        ({"window": "head_tail", "head_tokens": "128"}, "head_tokens is '128', expected an integer"),
        ({"window": "head_tail", "head_tokens": True}, "head_tokens is True, expected an integer"),
        ({"window": "bag"}, "window 'bag' is unknown"),
        ({"window": "head", "path": "../x"}, r"unknown field\(s\) \['path'\]"),
        ({"window": "head", "affix_counts": [[0, -1]]}, "affix_counts must be a list of"),
        ({"window": "head", "affix_counts": [[0, -1, 2.5]]}, "affix_counts must be a list of"),
        (
            {"window": "head", "prefixes": ["ab"], "affix_counts": [[1, -1, 3]]},
            r"entry \[1, -1, 3\] does not name",
        ),
    ],
)
def test_malformed_manifest_blocks_are_refused(block, message: str) -> None:
    with pytest.raises(RepresentationError, match=message):
        Representation.from_manifest(block)


# ------------------------------------------------------------------------------------------ encoder
def test_templated_prompts_collapse_under_truncation_and_not_once_the_template_is_removed() -> None:
    long_system = SYSTEM * 6  # ~400 tokens: past the first 256
    texts = [long_system + q for q in QUESTIONS]
    plain = Embedder(DEFAULT_ENCODER, device="cpu")
    x = plain.encode(texts)
    assert identical_embeddings(texts, x) == (len(QUESTIONS), 1)  # the old behaviour: one vector for all
    prefixes, _, _ = learn_affixes(texts, min_prompts=5, min_chars=200)
    learned = Embedder(DEFAULT_ENCODER, device="cpu", representation=Representation(prefixes=tuple(prefixes)))
    y = learned.encode(texts)
    assert identical_embeddings(texts, y) == (0, 0)
    np.testing.assert_allclose(y, plain.encode(QUESTIONS), atol=1e-6)  # what the bare questions give
    tails = Embedder(
        DEFAULT_ENCODER,
        device="cpu",
        representation=Representation(window="head_tail", head_tokens=128, tail_tokens=126),
    ).encode(texts)
    assert identical_embeddings(texts, tails) == (0, 0)


def test_token_windows_match_the_plain_encoder_on_short_prompts() -> None:
    """A head_tail window or one chunk over a prompt shorter than the window is the prompt itself."""
    texts = ["What is 2 + 2?", "  Write a haiku about routers.  ", "Übersetze: le routeur choisit 🙂", ""]
    want = Embedder(DEFAULT_ENCODER, device="cpu").encode(texts)
    for rep in (
        Representation(window="head_tail", head_tokens=128, tail_tokens=126),
        Representation(window="chunks", chunk_tokens=254),
    ):
        got = Embedder(DEFAULT_ENCODER, device="cpu", representation=rep).encode(texts)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_chunks_are_mean_pooled_by_length() -> None:
    rep = Representation(window="chunks", chunk_tokens=6)
    emb = Embedder(DEFAULT_ENCODER, device="cpu", max_seq_length=8, representation=rep)
    text = "one two three four five six seven eight nine"  # 9 tokens: chunks of 6 and 3
    parts = Embedder(DEFAULT_ENCODER, device="cpu", max_seq_length=8).encode(
        ["one two three four five six", "seven eight nine"]
    )
    pooled = 6 * parts[0] + 3 * parts[1]
    np.testing.assert_allclose(emb.encode([text])[0], pooled / np.linalg.norm(pooled), atol=1e-6)


def test_cache_key_includes_the_representation(tmp_path: Path) -> None:
    texts = [SYSTEM * 6 + q for q in QUESTIONS[:3]]
    a = Embedder(DEFAULT_ENCODER, device="cpu", cache_dir=tmp_path)
    b = Embedder(
        DEFAULT_ENCODER,
        device="cpu",
        cache_dir=tmp_path,
        representation=Representation(prefixes=(SYSTEM * 6,)),
    )
    c = Embedder(
        DEFAULT_ENCODER,
        device="cpu",
        cache_dir=tmp_path,
        representation=Representation(prefixes=(SYSTEM * 5,)),
    )
    assert len({a.encoder_id, b.encoder_id, c.encoder_id}) == 3
    xa, xb, xc = a.encode(texts), b.encode(texts), c.encode(texts)
    assert (a.n_encoded, b.n_encoded, c.n_encoded) == (3, 3, 3)  # nothing served from another's entries
    assert not np.allclose(xa, xb) and not np.allclose(xb, xc)
    again = Embedder(
        DEFAULT_ENCODER,
        device="cpu",
        cache_dir=tmp_path,
        representation=Representation(prefixes=(SYSTEM * 6,)),
    )
    np.testing.assert_array_equal(again.encode(texts), xb)
    assert again.n_encoded == 0  # the same representation reads its own entries back


def test_plain_representation_keeps_the_old_cache_key() -> None:
    assert (
        Embedder(DEFAULT_ENCODER, device="cpu").encoder_id
        == f"{DEFAULT_ENCODER}|max_seq_length=256|normalized"
    )


# ------------------------------------------------------------------------------------------ the warning
def _write_custom(folder: Path, prompts: list[str]) -> list[str]:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"p{i}" for i in range(len(prompts))]
    pd.DataFrame({"prompt_id": ids, "prompt": prompts}).to_csv(folder / "prompts.csv", index=False)
    rng = np.random.default_rng(0)
    rows = [
        {"prompt_id": p, "model": m, "quality": float(rng.uniform()), "cost_usd": c}
        for p in ids
        for m, c in (("small", 0.001), ("large", 0.01))
    ]
    pd.DataFrame(rows).to_csv(folder / "outcomes.csv", index=False)
    pd.DataFrame(
        {"model": ["small", "large"], "usd_per_1m_input": [0.1, 1.0], "usd_per_1m_output": [0.2, 2.0]}
    ).to_csv(folder / "models.csv", index=False)
    return [
        "data=custom",
        f"data.outcomes={folder / 'outcomes.csv'}",
        f"data.prompts={folder / 'prompts.csv'}",
        f"data.models={folder / 'models.csv'}",
        "evaluation.folds=2",
    ]


def _prepare(overrides: list[str]):
    from hydra import compose, initialize_config_module

    from router_rl.training import prepare

    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return prepare(cfg)


def test_train_warns_when_many_prompts_embed_identically(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = [SYSTEM * 6 + q for q in QUESTIONS] + ["a plain prompt", "another plain prompt"]
    data = _write_custom(tmp_path / "data", prompts)
    with pytest.warns(
        EmbeddingWarning, match=r"^8 of 10 prompts \(80\.0%\) embed identically .* \(1 groups\)"
    ):
        setup = _prepare([*data, "embedder.representation.affixes.enabled=false"])
    assert setup.embedder.representation.is_plain
    with warnings.catch_warnings():  # the default learns the template and reads what varies: no warning
        warnings.simplefilter("error", EmbeddingWarning)
        setup = _prepare(data)
    assert setup.embedder.representation.prefixes == (SYSTEM * 6,)
    assert identical_embeddings(prompts, setup.embeddings) == (0, 0)
    # affixes.mode auto (the default) said what it chose: random outcomes, so the template is dropped
    assert setup.embedder.representation.affix_mode == "drop"
    assert "templates: outcomes across the 2 groups of matched templates do not differ: dropped" in (
        capsys.readouterr().out
    )


def test_repeated_identical_prompts_do_not_trigger_the_warning(tmp_path: Path, cache_dir: Path) -> None:
    prompts = ["the same prompt"] * 6 + ["a different prompt", "and another one"]
    data = _write_custom(tmp_path / "data", prompts)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbeddingWarning)
        _prepare(data)


# ------------------------------------------------------------------------------------------ serving
def _artifact(tmp_path: Path, embedder: Embedder, dim: int, name: str = "artifact") -> Path:
    from router_rl.serve.artifact import write_linear_artifact

    rng = np.random.default_rng(0)
    models = [
        {"name": "small", "usd_per_1m_input": 0.1, "usd_per_1m_output": 0.2},
        {"name": "large", "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0},
    ]
    tensors = {k: rng.normal(size=(2, dim + 1)) for k in ("theta_quality", "theta_cost", "theta_latency")}
    block = embedder.manifest(dim)
    return write_linear_artifact(
        tmp_path / name, models=models, tensors=tensors, embedder=block, cost_scale=1.0
    )


def test_serving_applies_exactly_the_representation_training_recorded(tmp_path: Path) -> None:
    from router_rl.serve.artifact import load_artifact
    from router_rl.serve.router import Router

    texts = [SYSTEM * 6 + q for q in QUESTIONS]
    prefixes, _, record = learn_affixes(texts, min_prompts=5, min_chars=200)
    rep = Representation(
        prefixes=tuple(prefixes), window="head_tail", head_tokens=128, tail_tokens=126, learned=record
    )
    trained = Embedder(DEFAULT_ENCODER, device="cpu", representation=rep)
    x = trained.encode(texts)
    path = _artifact(tmp_path, trained, x.shape[1])
    manifest = load_artifact(path).manifest
    assert (
        Representation.from_manifest(manifest["embedder"]["representation"]) == rep
    )  # sealed in the manifest
    router = Router(path, device="cpu")
    np.testing.assert_allclose(router.embed(texts), x, atol=1e-6)
    assert router.embedder.representation.fingerprint == rep.fingerprint
    assert router.embedder.describe["representation"] == "head_tail 128+126, 1 prefix"
    # an embedder handed over (a hot reload) keeps its model but reads prompts the artifact's way
    plain = Embedder(DEFAULT_ENCODER, device="cpu", memory_cache_size=8)
    plain.encode(texts)  # its memory cache holds the plain (collapsed) vectors: they must not leak
    reused = Router(path, device="cpu", embedder=plain)
    assert reused.embedder._model is plain._model and reused.embedder.memory_cache is not plain.memory_cache
    np.testing.assert_allclose(reused.embed(texts), x, atol=1e-6)
    decisions = router.decide(texts, cost_weight=0.1)
    assert [d.model for d in decisions] == [d.model for d in reused.decide(texts, cost_weight=0.1)]


def test_an_artifact_without_a_representation_serves_the_plain_text(tmp_path: Path) -> None:
    """Artifacts exported before representations existed: no block, the text as given."""
    from router_rl.serve.artifact import write_linear_artifact
    from router_rl.serve.router import Router

    block = {"id": DEFAULT_ENCODER, "dim": 384, "max_seq_length": 256}
    rng = np.random.default_rng(0)
    tensors = {k: rng.normal(size=(2, 385)) for k in ("theta_quality", "theta_cost", "theta_latency")}
    models = [{"name": n, "usd_per_1m_input": 1.0, "usd_per_1m_output": 1.0} for n in ("a", "b")]
    path = write_linear_artifact(
        tmp_path / "old", models=models, tensors=tensors, embedder=block, cost_scale=1.0
    )
    router = Router(path, device="cpu")
    assert router.embedder.representation.is_plain
    assert router.embedder.encoder_id == f"{DEFAULT_ENCODER}|max_seq_length=256|normalized"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"representation": {"window": "bag"}}, "embedder.representation window 'bag' is unknown"),
        ({"representation": {"window": "head", "prefixes": [7]}}, "embedder.representation.prefixes must be"),
        ({"representation": "head"}, "embedder.representation must be an object"),
        ({"kind": "lookup"}, "embedder.kind is 'lookup'; expected transformer or static"),
        ({"kind": "static"}, r"a static embedder needs files \{weights, tokenizer\}"),
        (
            {"kind": "static", "files": {"weights": "w.bin", "tokenizer": "t.json"}},
            "is not one of the artifact's files",
        ),
    ],
)
def test_a_malformed_embedder_block_is_refused_in_one_line(
    tmp_path: Path, change: dict, message: str
) -> None:
    from router_rl.serve.artifact import ArtifactError, write_linear_artifact
    from router_rl.serve.router import Router

    block = {"id": DEFAULT_ENCODER, "dim": 384, "max_seq_length": 256, **change}
    tensors = {k: np.zeros((2, 385)) for k in ("theta_quality", "theta_cost", "theta_latency")}
    models = [{"name": n, "usd_per_1m_input": 1.0, "usd_per_1m_output": 1.0} for n in ("a", "b")]
    path = write_linear_artifact(
        tmp_path / "bad", models=models, tensors=tensors, embedder=block, cost_scale=1.0
    )
    with pytest.raises(ArtifactError, match=message) as info:
        Router(path, device="cpu")
    assert "\n" not in str(info.value)


def test_pooled_affixes_add_the_template_embedding_once() -> None:
    """affix_mode pool: what varies plus the matched template's own embedding, equal weights; a prompt
    without a template is encoded as it is."""
    long_system = SYSTEM * 6
    rep = Representation(prefixes=(long_system,), affix_mode="pool")
    assert rep.split(long_system + "hello there") == ("hello there", long_system)
    assert rep.split("plain text") == ("plain text", "")
    pooled = Embedder(DEFAULT_ENCODER, device="cpu", representation=rep)
    x = pooled.encode([long_system + "hello there", long_system + "good bye", "plain text"])
    parts = Embedder(DEFAULT_ENCODER, device="cpu").encode(
        ["hello there", "good bye", long_system, "plain text"]
    )
    for i in (0, 1):
        want = parts[i] + parts[2]
        np.testing.assert_allclose(x[i], want / np.linalg.norm(want), atol=1e-6)
    np.testing.assert_allclose(x[2], parts[3], atol=1e-6)
    assert list(pooled._templates) == [long_system]  # encoded once, kept for the next requests
    assert Representation.from_manifest(rep.to_manifest()).affix_mode == "pool"
    assert rep.fingerprint != Representation(prefixes=(long_system,)).fingerprint
    with pytest.raises(RepresentationError, match="affix_mode 'keep' is unknown"):
        Representation(affix_mode="keep")


def test_centered_affixes_add_the_template_less_its_training_mean() -> None:
    """affix_mode center: what varies plus (the matched template's embedding less the mean of the templates
    over the training prompts, a prompt without one counting as zero). One template shared by every training
    prompt adds nothing (the same vectors as dropping it); two say which a prompt came with; the counts are
    sealed in the manifest and serving reads them back."""
    other = (
        "Answer the arithmetic question below. Show each step, then give the number alone on its last line. "
        * 3
    )
    system = SYSTEM * 6
    texts = [system + q for q in QUESTIONS[:4]] + [other + q for q in QUESTIONS[4:6]] + QUESTIONS[6:]
    rep = Representation(prefixes=(system, other), affix_mode="center").with_counts(texts)
    i_sys, i_other = rep.prefixes.index(system), rep.prefixes.index(other)
    assert sorted(rep.affix_counts) == sorted([(i_sys, -1, 4), (i_other, -1, 2), (-1, -1, 2)])
    assert dict(rep.affix_weights()) == {system: 0.5, other: 0.25}
    assert rep.describe() == "head, affixes centered, 2 prefixes"
    parts = Embedder(DEFAULT_ENCODER, device="cpu").encode([*QUESTIONS, system, other])
    t_sys, t_other = parts[len(QUESTIONS)], parts[len(QUESTIONS) + 1]
    mean = 0.5 * t_sys + 0.25 * t_other
    x = Embedder(DEFAULT_ENCODER, device="cpu", representation=rep).encode(texts)
    for i, template in enumerate([t_sys] * 4 + [t_other] * 2 + [0 * t_sys] * 2):
        want = parts[i] + template - mean
        np.testing.assert_allclose(x[i], want / np.linalg.norm(want), atol=1e-6)
    back = Representation.from_manifest(rep.to_manifest())
    assert back == rep and back.fingerprint == rep.fingerprint
    assert rep.fingerprint != Representation(prefixes=(system, other), affix_mode="center").fingerprint
    assert rep.with_affixes(rep.prefixes, ()).affix_counts == ()  # new affixes: counts are taken again

    one = [system + q for q in QUESTIONS]
    shared = Representation(prefixes=(system,), affix_mode="center").with_counts(one)
    dropped = Embedder(DEFAULT_ENCODER, device="cpu", representation=Representation(prefixes=(system,)))
    np.testing.assert_allclose(
        Embedder(DEFAULT_ENCODER, device="cpu", representation=shared).encode(one),
        dropped.encode(one),
        atol=1e-6,
    )
    assert Representation(prefixes=(system,)).with_counts(one).affix_counts == ()  # drop: nothing to count


def test_training_counts_centered_affixes_and_serving_applies_them(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from router_rl.serve.router import Router
    from router_rl.training import fit_representation

    other = (
        "Answer the arithmetic question below. Show each step, then give the number alone on its last line. "
        * 3
    )
    texts = [SYSTEM * 6 + q for q in QUESTIONS] + [other + q for q in QUESTIONS[:6]]
    cfg = OmegaConf.create(
        {
            "representation": {
                "window": "head",
                "affixes": {"enabled": True, "mode": "center", "min_prompts": 5},
            }
        }
    )
    rep = fit_representation(cfg, texts)
    assert rep.affix_mode == "center" and len(rep.prefixes) == 2
    assert sum(c for *_, c in rep.affix_counts) == len(texts)
    trained = Embedder(DEFAULT_ENCODER, device="cpu", representation=rep)
    x = trained.encode(texts)
    path = _artifact(tmp_path, trained, x.shape[1])
    router = Router(path, device="cpu")
    assert router.embedder.representation == rep
    np.testing.assert_allclose(router.embed(texts), x, atol=1e-6)
    alone = Router(path, device="cpu")  # a first request alone (one template seen): the same vector
    np.testing.assert_allclose(alone.embed(texts[-1:]), x[-1:], atol=1e-6)


def test_auto_centers_only_when_the_templates_tell_outcomes_apart() -> None:
    """affixes.mode auto: a one-way ANOVA of each model's quality across the matched templates (Bonferroni
    over models) decides; random templates are dropped, templates that name tasks with different outcomes are
    centered, and the test is recorded in the artifact's ``learned`` block."""
    from omegaconf import OmegaConf

    from router_rl.representation import templates_inform
    from router_rl.training import fit_representation

    other = (
        "Answer the arithmetic question below. Show each step, then give the number alone on its last line. "
        * 3
    )
    rng = np.random.default_rng(0)
    n = 120
    texts = [
        (SYSTEM * 6 if i % 2 else other) + f"question {i}: {QUESTIONS[i % len(QUESTIONS)]}" for i in range(n)
    ]
    task = np.array([i % 2 for i in range(n)])
    noise = rng.random((n, 2))
    informative = np.stack([0.3 + 0.4 * task, np.full(n, 0.6)], axis=1) + 0.2 * (noise - 0.5)
    uninformative = noise  # the same for both templates
    rep = Representation(prefixes=(SYSTEM * 6, other))
    yes = templates_inform(rep, texts, informative)
    no = templates_inform(rep, texts, uninformative)
    assert yes["center"] and yes["p_value"] < 1e-6 and yes["groups"] == 2
    assert not no["center"] and no["p_value"] > 0.01
    assert not templates_inform(rep, texts, np.ones((n, 2)))["center"]  # nothing varies
    with pytest.raises(ValueError, match=r"quality has shape \(3, 2\)"):
        templates_inform(rep, texts, np.ones((3, 2)))

    cfg = OmegaConf.create(
        {"representation": {"window": "head", "affixes": {"enabled": True, "mode": "auto", "min_prompts": 5}}}
    )
    centered = fit_representation(cfg, texts, informative)
    assert centered.affix_mode == "center" and centered.affix_counts
    assert centered.learned["auto"]["center"] and centered.learned["auto"]["alpha"] == 0.01
    assert Representation.from_manifest(centered.to_manifest()) == centered
    dropped = fit_representation(cfg, texts, uninformative)
    assert dropped.affix_mode == "drop" and not dropped.affix_counts and not dropped.learned["auto"]["center"]
    assert fit_representation(cfg, texts).affix_mode == "drop"  # no outcomes: nothing to test
    bad = OmegaConf.create({"representation": {"affixes": {"enabled": True, "mode": "mean"}}})
    with pytest.raises(RepresentationError, match="affixes.mode 'mean' is unknown"):
        fit_representation(bad, texts)
