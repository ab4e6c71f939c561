"""Tests for router_rl.data: the data contract, the bundled datasets, and deterministic splits."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router_rl.data import (
    BUNDLED,
    DataWarning,
    assign_splits,
    bundled_paths,
    kfold_assignments,
    load_bundled,
    load_catalog,
    load_dataset,
    read_table,
)
from router_rl.types import DataError

Tables = dict[str, pd.DataFrame]
# the contract's fixture is deliberately tiny (2 prompts); test_faults_data checks that warning
pytestmark = pytest.mark.filterwarnings("ignore:.*too few to evaluate a router on:router_rl.data.DataWarning")


def tables() -> Tables:
    """A small valid dataset. File lines of outcomes.csv: header 1, then rows on lines 2..5."""
    return {
        "outcomes": pd.DataFrame(
            {
                "prompt_id": ["p2", "p1", "p1", "p2"],
                "model": ["small", "big", "small", "big"],
                "quality": [0.7, 0.9, 0.5, 1.0],
                "input_tokens": [10, 100, 100, 10],
                "output_tokens": [20, 200, 50, 400],
                "split": ["test", "train", "train", "test"],
                "source_benchmark": ["b", "a", "a", "b"],
                "judge": ["gpt-4"] * 4,
            }
        ),
        # p3 is never referenced by the outcomes, so its empty text is not an error.
        "prompts": pd.DataFrame({"prompt_id": ["p1", "p2", "p3"], "prompt": ["Hello?", "Why?", ""]}),
        "models": pd.DataFrame(
            {
                "model": ["big", "unused", "small"],
                "usd_per_1m_input": [10.0, 1.0, 0.5],
                "usd_per_1m_output": [30.0, 1.0, 1.5],
                "ttft_s": [0.8, 0.1, np.nan],
                "family": ["x", "y", "z"],
            }
        ),
    }


WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    ".csv": lambda df, p: df.to_csv(p, index=False),
    ".csv.gz": lambda df, p: df.to_csv(p, index=False),
    ".jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
    ".jsonl.gz": lambda df, p: df.to_json(p, orient="records", lines=True, compression="gzip"),
    ".parquet": lambda df, p: df.to_parquet(p, index=False),
}


def write(
    tmp_path: Path, t: Tables, suffixes: tuple[str, str, str] = (".csv", ".jsonl", ".csv")
) -> list[Path]:
    paths = []
    for (key, df), suffix in zip(t.items(), suffixes, strict=True):
        path = tmp_path / f"{key}{suffix}"
        WRITERS[suffix](df, path)
        paths.append(path)
    return paths


def setv(key: str, row: int, col: str, value: object) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        t[key][col] = t[key][col].astype(object)
        t[key].loc[row, col] = value

    return mutate


def drop(key: str, *cols: str) -> Callable[[Tables], None]:
    return lambda t: t.__setitem__(key, t[key].drop(columns=list(cols)))


def with_cost_usd(t: Tables) -> None:
    t["outcomes"]["cost_usd"] = 0.01


def catalog_without_small(t: Tables) -> None:
    with_cost_usd(t)
    t["models"] = t["models"][t["models"]["model"] != "small"]


def duplicate_catalog_model(t: Tables) -> None:
    t["models"] = pd.concat([t["models"], t["models"].iloc[[0]]], ignore_index=True)


def duplicate_prompt(t: Tables) -> None:
    t["prompts"] = pd.concat([t["prompts"], t["prompts"].iloc[[1]]], ignore_index=True)


ERRORS = [
    # outcomes: columns
    ("no quality column", drop("outcomes", "quality"), r"outcomes\.csv: missing column 'quality'; expected"),
    ("no prompt_id column", drop("outcomes", "prompt_id"), r"outcomes\.csv: missing column 'prompt_id'"),
    ("no model column", drop("outcomes", "model"), r"outcomes\.csv: missing column 'model'"),
    (
        "no cost and no tokens",
        drop("outcomes", "input_tokens", "output_tokens"),
        r"outcomes\.csv: missing column 'cost_usd'; expected .*either cost_usd or both input_tokens",
    ),
    (
        "one token column only",
        drop("outcomes", "output_tokens"),
        r"outcomes\.csv: missing column 'output_tokens'",
    ),
    # outcomes: values
    (
        "quality above 1",
        setv("outcomes", 1, "quality", 1.5),
        r"outcomes\.csv: line 3: column 'quality' is 1\.5; expected a number in \[0, 1\]",
    ),
    (
        "quality below 0",
        setv("outcomes", 0, "quality", -0.1),
        r"outcomes\.csv: line 2: column 'quality' is -0\.1",
    ),
    (
        "quality not a number",
        setv("outcomes", 2, "quality", "good"),
        r"outcomes\.csv: line 4: column 'quality' is 'good'; expected a number$",
    ),
    (
        "duplicate (prompt_id, model)",
        setv("outcomes", 3, "model", "small"),
        r"outcomes\.csv: line 5: column 'prompt_id' is 'p2'; expected one row per \(prompt_id, model\) "
        r"\(this one is also on line 2\)",
    ),
    (
        "empty prompt_id",
        setv("outcomes", 1, "prompt_id", ""),
        r"outcomes\.csv: line 3: column 'prompt_id' is ''",
    ),
    ("empty model", setv("outcomes", 1, "model", None), r"outcomes\.csv: line 3: column 'model' is ''"),
    (
        "negative tokens",
        setv("outcomes", 0, "input_tokens", -5),
        r"outcomes\.csv: line 2: column 'input_tokens' is -5; expected a number >= 0",
    ),
    (
        "tokens not a number",
        setv("outcomes", 3, "output_tokens", "many"),
        r"outcomes\.csv: line 5: column 'output_tokens' is 'many'; expected a number",
    ),
    (
        "missing tokens and no cost_usd",
        setv("outcomes", 3, "output_tokens", None),
        r"outcomes\.csv: line 5: column 'input_tokens' is ''; expected a cost: cost_usd, or both input_tokens",
    ),
    (
        "negative cost_usd",
        lambda t: (with_cost_usd(t), setv("outcomes", 2, "cost_usd", -1.0)(t)),
        r"outcomes\.csv: line 4: column 'cost_usd' is -1; expected a number >= 0",
    ),
    (
        "negative latency",
        lambda t: t["outcomes"].__setitem__("latency_s", [1.0, -2.0, 1.0, 1.0]),
        r"outcomes\.csv: line 3: column 'latency_s' is -2; expected a number >= 0",
    ),
    (
        "bad split value",
        setv("outcomes", 0, "split", "validation"),
        r"outcomes\.csv: line 2: column 'split' is 'validation'; expected one of train, valid, test",
    ),
    ("empty split value", setv("outcomes", 0, "split", None), r"outcomes\.csv: line 2: column 'split' is ''"),
    (
        "conflicting splits of one prompt",
        setv("outcomes", 2, "split", "valid"),
        r"outcomes\.csv: line 4: column 'split' is 'valid'; expected one split per prompt; "
        r"prompt 'p1' is 'train' on line 3",
    ),
    # outcomes x catalog
    (
        "model not in the catalog",
        setv("outcomes", 1, "model", "ghost"),
        r"outcomes\.csv: line 3: column 'model' is 'ghost'; expected a model of the catalog \S*models\.csv",
    ),
    (
        "model not in the catalog although cost_usd is given",
        catalog_without_small,
        r"outcomes\.csv: line 2: column 'model' is 'small'; expected a model of the catalog .*latency priors, "
        r"even with cost_usd",
    ),
    (
        "no price for a model priced from tokens",
        setv("models", 2, "usd_per_1m_output", None),
        r"models\.csv: model 'small' has no 'usd_per_1m_output'; expected a price .*outcomes\.csv line 2",
    ),
    # outcomes x prompts
    (
        "prompt_id not in the prompts table",
        lambda t: t["outcomes"].__setitem__("prompt_id", ["p2", "p9", "p9", "p2"]),
        r"outcomes\.csv: line 3: column 'prompt_id' is 'p9'; expected a prompt_id of the prompts table "
        r"\S*prompts\.jsonl",
    ),
    (
        "prompt with empty text",
        setv("prompts", 1, "prompt", "  "),
        r"prompts\.jsonl: line 2: column 'prompt' is ''; expected the text of prompt 'p2'",
    ),
    (
        "prompt with null text",
        setv("prompts", 0, "prompt", None),
        r"prompts\.jsonl: line 1: column 'prompt' is ''; expected the text of prompt 'p1'",
    ),
    ("prompts without text column", drop("prompts", "prompt"), r"prompts\.jsonl: missing column 'prompt'"),
    (
        "duplicate prompt_id in prompts",
        duplicate_prompt,
        r"prompts\.jsonl: line 4: column 'prompt_id' is 'p2'; expected each prompt_id once "
        r"\(this one is also on line 2\)",
    ),
    # catalog
    (
        "catalog without a price column",
        drop("models", "usd_per_1m_input"),
        r"models\.csv: missing column 'usd_per_1m_input'",
    ),
    (
        "negative price",
        setv("models", 1, "usd_per_1m_input", -1.0),
        r"models\.csv: line 3: column 'usd_per_1m_input' is -1; expected a number >= 0",
    ),
    (
        "price not a number",
        setv("models", 0, "usd_per_1m_output", "cheap"),
        r"models\.csv: line 2: column 'usd_per_1m_output' is 'cheap'; expected a number",
    ),
    (
        "duplicate catalog model",
        duplicate_catalog_model,
        r"models\.csv: line 5: column 'model' is 'big'; expected each model once \(this one is also on line 2\)",
    ),
    (
        "zero decode speed",
        lambda t: t["models"].__setitem__("output_tokens_per_s", [30.0, 0.0, 50.0]),
        r"models\.csv: line 3: column 'output_tokens_per_s' is 0; expected a number > 0",
    ),
]


@pytest.mark.parametrize(("description", "mutate", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_contract_violations_raise_data_error(
    tmp_path: Path, description: str, mutate: Callable[[Tables], None], message: str
) -> None:
    t = tables()
    mutate(t)
    with pytest.raises(DataError, match=message):
        load_dataset(*write(tmp_path, t))


READ_ERRORS = [
    ("missing file", "absent.csv", None, r"absent\.csv: no such file; expected a \.csv table"),
    ("unknown suffix", "data.xlsx", b"x", r"data\.xlsx: unknown file type; expected one of \.csv\.gz, "),
    ("ragged csv", "bad.csv", b"a,b\n1,2\n3,4,5,6\n", r"bad\.csv: cannot be read as \.csv \(ParserError"),
    (
        "record longer than header",
        "long.csv",
        b"a,b\n1,2,3\n",
        r"long\.csv: cannot be read as \.csv \(ParserWarning",
    ),
    ("not utf-8", "latin.csv", "a,b\n\xe9,1\n".encode("latin-1"), r"latin\.csv: cannot be read as \.csv"),
    ("empty csv", "empty.csv", b"", r"empty\.csv: cannot be read as \.csv"),
    ("not gzip", "bad.csv.gz", b"plain text", r"bad\.csv\.gz: cannot be read as \.csv\.gz"),
    ("not parquet", "bad.parquet", b"junk", r"bad\.parquet: cannot be read as \.parquet"),
    ("broken json line", "bad.jsonl", b'{"a": 1}\n{oops\n', r"bad\.jsonl: line 2: not valid JSON"),
    (
        "json array line",
        "bad.jsonl",
        b'{"a": 1}\n\n[1, 2]\n',
        r"bad\.jsonl: line 3: got a JSON list; expected a JSON",
    ),
]


@pytest.mark.parametrize(
    ("description", "name", "content", "message"), READ_ERRORS, ids=[e[0] for e in READ_ERRORS]
)
def test_unreadable_files_raise_data_error(
    tmp_path: Path, description: str, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(tmp_path / name)


def test_wide_data_orders_prices_and_keeps_extras(tmp_path: Path) -> None:
    data = load_dataset(*write(tmp_path, tables()))
    assert data.name == "outcomes"
    assert list(data.prompt_ids) == ["p2", "p1"]  # first appearance in the outcomes
    assert list(data.prompts) == ["Why?", "Hello?"]
    assert data.models == ("big", "small")  # catalog order, unused catalog model left out
    np.testing.assert_allclose(data.quality, [[1.0, 0.7], [0.9, 0.5]])
    # p1/big by hand: 100 input tokens at $10/M + 200 output tokens at $30/M = $0.001 + $0.006.
    assert data.cost_usd[1, 0] == pytest.approx(0.007)
    assert data.cost_usd[0, 1] == pytest.approx((10 * 0.5 + 20 * 1.5) / 1e6)
    np.testing.assert_array_equal(data.output_tokens, [[400, 20], [200, 50]])
    assert np.isnan(data.latency_s).all()
    assert list(data.split) == ["test", "train"]
    assert list(data.groups) == ["b", "a"]
    assert data.catalog.models == ("big", "small")
    assert np.isnan(data.catalog.ttft_s[1]) and np.isnan(data.catalog.output_tokens_per_s).all()
    assert list(data.catalog.table["family"]) == ["x", "z"]


def test_cost_usd_wins_over_tokens_and_needs_no_price(tmp_path: Path) -> None:
    t = tables()
    t["outcomes"]["cost_usd"] = [0.5, 0.25, np.nan, 1.0]  # line 4 has no dollars: priced from tokens
    t["models"].loc[0, "usd_per_1m_input"] = np.nan  # big is never priced from tokens
    data = load_dataset(*write(tmp_path, t), name="mine")
    assert data.name == "mine"
    np.testing.assert_allclose(data.cost_usd, [[1.0, 0.5], [0.25, (100 * 0.5 + 50 * 1.5) / 1e6]])
    np.testing.assert_array_equal(data.input_tokens, [[10, 10], [100, 100]])  # tokens kept


def test_missing_pair_is_nan_and_no_split_column(tmp_path: Path) -> None:
    t = tables()
    t["outcomes"] = t["outcomes"].drop(index=3).drop(columns=["split", "source_benchmark"])
    data = load_dataset(*write(tmp_path, t))
    assert np.isnan(data.quality[0, 0]) and np.isnan(data.cost_usd[0, 0])
    assert list(data.complete_rows()) == [False, True]
    assert data.split is None and data.groups is None


def test_catalog_object_instead_of_file(tmp_path: Path) -> None:
    outcomes, prompts, models = write(tmp_path, tables())
    data = load_dataset(outcomes, prompts, catalog=load_catalog(models))
    assert data.models == ("big", "small")
    with pytest.raises(ValueError, match="exactly one"):
        load_dataset(outcomes, prompts, models, catalog=load_catalog(models))


def test_empty_quality_rows_dropped_with_one_counted_warning(tmp_path: Path) -> None:
    t = tables()
    t["outcomes"]["quality"] = ["", " n/a ", "0.5", "1.0"]
    with pytest.warns(
        DataWarning, match=r"outcomes\.csv: dropped 2 rows with empty quality \(line 2, line 3\)"
    ):
        data = load_dataset(*write(tmp_path, t))
    assert list(data.prompt_ids) == ["p1", "p2"]  # order of first appearance among the kept rows
    np.testing.assert_array_equal(data.quality, [[np.nan, 0.5], [1.0, np.nan]])
    np.testing.assert_array_equal(np.isnan(data.cost_usd), np.isnan(data.quality))

    t["outcomes"]["quality"] = np.nan
    with pytest.warns(DataWarning, match="dropped 4 rows"), pytest.raises(DataError, match="no outcome rows"):
        load_dataset(*write(tmp_path, t))


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_every_format_loads_the_same_data(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "ref").mkdir()
    reference = load_dataset(*write(tmp_path / "ref", tables()))
    data = load_dataset(*write(tmp_path, tables(), (suffix,) * 3))
    assert data.name == "outcomes"
    for field in ("prompt_ids", "prompts", "quality", "cost_usd", "input_tokens", "output_tokens", "split"):
        np.testing.assert_array_equal(getattr(data, field), getattr(reference, field), err_msg=field)
    assert data.models == reference.models
    assert read_table(tmp_path / f"outcomes{suffix}")["prompt_id"].map(type).eq(str).all()


def test_numeric_looking_ids_stay_strings(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text("prompt_id,model,quality,cost_usd\n007,1,0.5,0.1\n")
    assert read_table(tmp_path / "o.csv").loc[0, "prompt_id"] == "007"
    (tmp_path / "p.jsonl").write_text('{"prompt_id": 7, "prompt": "hi"}\n')
    assert read_table(tmp_path / "p.jsonl").loc[0, "prompt_id"] == "7"


def test_line_numbers_count_newlines_inside_quoted_fields(tmp_path: Path) -> None:
    t = tables()
    t["prompts"] = pd.DataFrame({"prompt_id": ["p1", "p2"], "prompt": ["two\nlines", ""]})
    paths = write(tmp_path, t, (".csv", ".csv", ".csv"))
    with pytest.raises(DataError, match=r"prompts\.csv: line 4: column 'prompt' is ''"):
        load_dataset(*paths)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    t = tables()
    t["outcomes"].loc[1, "quality"] = 2.0
    with pytest.raises(DataError, match=r"outcomes\.parquet: row 2: column 'quality' is 2"):
        load_dataset(*write(tmp_path, t, (".parquet", ".jsonl", ".csv")))


def test_bundled_arena_matches_documented_facts() -> None:
    with pytest.warns(DataWarning, match="dropped 40 rows with empty quality"):
        data = load_bundled("arena")
    assert (data.name, data.n_prompts, data.n_models) == ("arena", 300, 16)
    assert data.split is None and data.groups is not None
    assert np.isnan(data.quality).sum() == 40
    np.testing.assert_array_equal(np.isnan(data.cost_usd), np.isnan(data.quality))  # every outcome priced
    # The documented figures are measured on the 270 prompts that every model answered.
    complete = data.take(data.complete_rows())
    assert complete.n_prompts == 270
    means = dict(zip(complete.models, np.mean(complete.quality, axis=0), strict=True))
    assert max(means, key=means.get) == "gpt-4-1106-preview"
    assert round(means["gpt-4-1106-preview"], 3) == 0.890
    # The documented 0.152 is 0.15148 rounded twice (0.1515 -> 0.152); it is 0.151 to three decimals.
    assert means["llama-13b"] == pytest.approx(0.1515, abs=5e-5)
    assert min(means, key=means.get) == "llama-13b"
    assert round(complete.quality.max(axis=1).mean(), 3) == 0.963
    # First line of the file: Llama-2-70b-chat, 134 input and 811 output tokens at $0.9/M each.
    i = list(data.prompt_ids).index("0000d826867d47dabd7d4b110beea2e9")
    assert data.cost_usd[i, data.models.index("Llama-2-70b-chat")] == pytest.approx((134 + 811) * 0.9 / 1e6)


def test_bundled_routellm_matches_documented_facts() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # no empty qualities in this file
        data = load_bundled("routellm")
    assert (data.n_prompts, data.models) == (15_521, ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"))
    assert data.complete_rows().all()
    np.testing.assert_allclose(data.quality.mean(axis=0).round(3), [0.811, 0.679])
    assert round(data.quality.max(axis=1).mean(), 3) == 0.865


def test_bundled_paths_and_unknown_name() -> None:
    for name in BUNDLED:
        assert all(p.is_file() for p in bundled_paths(name))
    with pytest.raises(DataError, match=r"unknown bundled dataset 'mmlu'; expected one of arena, routellm"):
        bundled_paths("mmlu")


def test_bundled_catalog_keeps_extra_columns() -> None:
    catalog = load_catalog(bundled_paths("arena")[2])
    assert len(catalog.models) == 17 and catalog.models[0] == "gpt-4-1106-preview"
    assert (catalog.usd_per_1m_input[0], catalog.usd_per_1m_output[0]) == (10.0, 30.0)
    assert "price_basis" in catalog.table.columns


IDS = np.array([f"prompt-{i}" for i in range(1000)], dtype=object)


def test_splits_are_deterministic_grouped_and_order_free() -> None:
    splits = assign_splits(IDS, seed=0)
    np.testing.assert_array_equal(splits, assign_splits(IDS, seed=0))
    perm = np.random.default_rng(1).permutation(len(IDS))
    np.testing.assert_array_equal(assign_splits(IDS[perm], seed=0), splits[perm])
    assert (assign_splits(IDS, seed=1) != splits).mean() > 0.2
    repeated = assign_splits(np.repeat(IDS[:50], 3), seed=0)
    np.testing.assert_array_equal(repeated, np.repeat(splits[:50], 3))
    frac = {s: (splits == s).mean() for s in ("train", "valid", "test")}
    assert frac["test"] == pytest.approx(0.2, abs=0.04)
    assert frac["valid"] == pytest.approx(0.1, abs=0.03)
    assert frac["train"] == pytest.approx(0.7, abs=0.05)
    assert set(assign_splits(IDS, seed=0, valid_fraction=0.0, test_fraction=0.5)) == {"train", "test"}
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(IDS, seed=0, valid_fraction=0.5, test_fraction=0.5)


def test_kfold_is_balanced_deterministic_and_order_free() -> None:
    ids = IDS[:103]
    folds = kfold_assignments(ids, k=5, seed=0)
    assert sorted(np.bincount(folds)) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(folds, kfold_assignments(ids, k=5, seed=0))
    perm = np.random.default_rng(2).permutation(len(ids))
    np.testing.assert_array_equal(kfold_assignments(ids[perm], k=5, seed=0), folds[perm])
    np.testing.assert_array_equal(kfold_assignments(np.repeat(ids, 2), k=5, seed=0), np.repeat(folds, 2))
    assert (kfold_assignments(ids, k=5, seed=1) != folds).mean() > 0.5
    for k in (1, 104):
        with pytest.raises(ValueError, match=r"k must be in \[2, number of prompts = 103\]"):
            kfold_assignments(ids, k=k, seed=0)
