"""Garbage in a routing dataset (issue 11): what is wrong raises a one-line DataError naming the file, the column
and the row; what is merely odd loads with a DataWarning that names them. One table of bad files."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router_rl.data import MAX_COST_USD, SMALL_PROMPTS, DataWarning, load_dataset
from router_rl.types import DataError

Tables = dict[str, pd.DataFrame]
N_PROMPTS = 60  # above SMALL_PROMPTS, so the base dataset loads without any warning


def base() -> Tables:
    """60 prompts x models a, b; priced from integer token counts. outcomes row i is on CSV line i + 2."""
    pids = [f"p{i:02d}" for i in range(N_PROMPTS)]
    rng = np.random.default_rng(0)
    n = 2 * N_PROMPTS
    return {
        "outcomes": pd.DataFrame(
            {
                "prompt_id": [p for p in pids for _ in range(2)],
                "model": ["a", "b"] * N_PROMPTS,
                "quality": rng.uniform(0, 1, n).round(3),
                "input_tokens": rng.integers(10, 500, n),
                "output_tokens": rng.integers(10, 900, n),
                "latency_s": rng.uniform(0.2, 3.0, n).round(2),
            }
        ),
        "prompts": pd.DataFrame({"prompt_id": pids, "prompt": [f"question {p}?" for p in pids]}),
        "models": pd.DataFrame(
            {"model": ["a", "b"], "usd_per_1m_input": [1.0, 10.0], "usd_per_1m_output": [2.0, 30.0]}
        ),
    }


def write(tmp_path: Path, t: Tables, suffixes: dict[str, str]) -> list[Path]:
    paths = []
    for key, df in t.items():
        suffix = suffixes.get(key, ".csv")
        path = tmp_path / f"{key}{suffix}"
        if suffix == ".parquet":
            df.to_parquet(path, index=False)
        elif suffix == ".jsonl":
            df.to_json(path, orient="records", lines=True)
        else:
            df.to_csv(path, index=False)
        paths.append(path)
    return paths


def cell(key: str, row: int, col: str, value: object) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        if col not in t[key]:
            t[key][col] = np.nan
        t[key][col] = t[key][col].astype(object)
        t[key].loc[row, col] = value

    return mutate


def column(key: str, col: str, make: Callable[[pd.Series], object]) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        t[key][col] = make(t[key][col] if col in t[key] else pd.Series(np.zeros(len(t[key]))))

    return mutate


def with_cost_usd(row: int, value: object) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        t["outcomes"]["cost_usd"] = 0.001
        cell("outcomes", row, "cost_usd", value)(t)

    return mutate


def only_model_a(*, catalog_too: bool) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        t["outcomes"] = t["outcomes"][t["outcomes"]["model"] == "a"].reset_index(drop=True)
        if catalog_too:
            t["models"] = t["models"].iloc[:1]

    return mutate


def first_prompts(n: int) -> Callable[[Tables], None]:
    def mutate(t: Tables) -> None:
        t["outcomes"] = t["outcomes"].iloc[: 2 * n]

    return mutate


PQ, JL = {"outcomes": ".parquet"}, {"outcomes": ".jsonl"}
CSV: dict[str, str] = {}
ERROR, WARNING = DataError, DataWarning

FAULTS = [
    # numeric columns hold numbers, whatever the file format keeps
    (
        "datetime token counts",
        column("outcomes", "input_tokens", lambda s: pd.to_datetime(s, unit="s")),
        PQ,
        ERROR,
        r"outcomes\.parquet: column 'input_tokens' holds dates \(dtype datetime64\[\w+\]\); expected numbers$",
    ),
    (
        "timedelta latency",
        column("outcomes", "latency_s", lambda s: pd.to_timedelta(s, unit="s")),
        PQ,
        ERROR,
        r"outcomes\.parquet: column 'latency_s' holds time deltas \(dtype timedelta64\[\w+\]\)",
    ),
    (
        "boolean quality (parquet)",
        column("outcomes", "quality", lambda s: s > 0.5),
        PQ,
        ERROR,
        r"outcomes\.parquet: column 'quality' holds booleans \(dtype bool\); expected numbers; cast it to 0/1",
    ),
    (
        "boolean quality (CSV True/False)",
        column("outcomes", "quality", lambda s: s > 0.5),
        CSV,
        ERROR,
        r"outcomes\.csv: column 'quality' holds booleans",
    ),
    (
        "boolean quality (JSONL true/false)",
        column("outcomes", "quality", lambda s: s > 0.5),
        JL,
        ERROR,
        r"outcomes\.jsonl: column 'quality' holds booleans",
    ),
    (
        "one boolean among numbers (JSONL)",
        cell("outcomes", 3, "quality", True),
        JL,
        ERROR,
        r"outcomes\.jsonl: line 4: column 'quality' is True; expected a number; write 0 or 1, not a boolean",
    ),
    (
        "nullable boolean quality",
        column("outcomes", "quality", lambda s: (s > 0.5).astype("boolean")),
        PQ,
        ERROR,
        r"column 'quality' holds booleans \(dtype bool(ean)?\)",
    ),
    (
        "datetime price",
        column("models", "usd_per_1m_input", lambda s: pd.to_datetime(s, unit="D")),
        {"models": ".parquet"},
        ERROR,
        r"models\.parquet: column 'usd_per_1m_input' holds dates",
    ),
    # a router needs models to choose between
    (
        "one-model catalog",
        only_model_a(catalog_too=True),
        CSV,
        ERROR,
        r"outcomes\.csv: outcomes of 1 model \(a\) only; the catalog \S+models\.csv lists 1; expected at least 2 models",
    ),
    (
        "one model in the outcomes",
        only_model_a(catalog_too=False),
        CSV,
        ERROR,
        r"outcomes\.csv: outcomes of 1 model \(a\) only; expected at least 2 models: a router chooses",
    ),
    # absurd or non-finite costs, token counts and latencies
    (
        "cost 1e300",
        with_cost_usd(4, 1e300),
        CSV,
        ERROR,
        rf"outcomes\.csv: line 6: column 'cost_usd' is 1e\+300; expected a cost per call of at most \${MAX_COST_USD:g}",
    ),
    (
        "cost inf",
        with_cost_usd(4, "inf"),
        CSV,
        ERROR,
        r"line 6: column 'cost_usd' is inf; expected a number >= 0",
    ),
    (
        "cost negative",
        with_cost_usd(0, -0.5),
        CSV,
        ERROR,
        r"line 2: column 'cost_usd' is -0\.5; expected a number >= 0",
    ),
    (
        "cost a word",
        with_cost_usd(1, "cheap"),
        CSV,
        ERROR,
        r"line 3: column 'cost_usd' is 'cheap'; expected a number$",
    ),
    (
        "tokens 1e12",
        cell("outcomes", 7, "output_tokens", 1e12),
        CSV,
        ERROR,
        r"line 9: column 'output_tokens' is 1000000000000; expected a token count of at most 10,000,000",
    ),
    (
        "tokens x prices above the bound",
        lambda t: (
            cell("outcomes", 1, "input_tokens", 9_000_000)(t),
            t["models"].__setitem__("usd_per_1m_input", [1.0, 300.0]),
        ),
        CSV,
        ERROR,
        r"outcomes\.csv: line 3: input_tokens 9e\+06 and output_tokens \d+ of model 'b' cost \$2700 at the "
        r"prices of \S+models\.csv; expected at most \$1000 per call",
    ),
    (
        "negative tokens",
        cell("outcomes", 2, "input_tokens", -3),
        CSV,
        ERROR,
        r"line 4: column 'input_tokens' is -3; expected a number >= 0",
    ),
    (
        "latency a week",
        cell("outcomes", 5, "latency_s", 604800.0),
        CSV,
        ERROR,
        r"line 7: column 'latency_s' is 604800; expected a latency of at most 86400 s",
    ),
    (
        "latency NaN-like word",
        cell("outcomes", 5, "latency_s", "slow"),
        CSV,
        ERROR,
        r"line 7: column 'latency_s' is 'slow'; expected a number$",
    ),
    (
        "quality above 1",
        cell("outcomes", 0, "quality", 7),
        CSV,
        ERROR,
        r"line 2: column 'quality' is 7; expected a number in \[0, 1\]",
    ),
    (
        "quality infinite",
        cell("outcomes", 0, "quality", "inf"),
        CSV,
        ERROR,
        r"line 2: column 'quality' is inf; expected a number in \[0, 1\]",
    ),
    # prices
    (
        "price missing where tokens need it",
        cell("models", 1, "usd_per_1m_output", None),
        CSV,
        ERROR,
        r"models\.csv: model 'b' has no 'usd_per_1m_output'; expected a price to turn the token counts",
    ),
    (
        "price infinite",
        cell("models", 0, "usd_per_1m_input", "inf"),
        CSV,
        ERROR,
        r"models\.csv: line 2: column 'usd_per_1m_input' is inf; expected a number >= 0",
    ),
    (
        "price negative",
        cell("models", 1, "usd_per_1m_output", -1),
        CSV,
        ERROR,
        r"models\.csv: line 3: column 'usd_per_1m_output' is -1",
    ),
    (
        "throughput zero",
        cell("models", 1, "output_tokens_per_s", 0),
        CSV,
        ERROR,
        r"column 'output_tokens_per_s' is 0; expected a number > 0",
    ),
    # merely odd: loaded, with a warning naming the rows
    (
        "fractional tokens",
        lambda t: (
            cell("outcomes", 3, "input_tokens", 10.5)(t),
            cell("outcomes", 9, "input_tokens", 0.25)(t),
        ),
        CSV,
        WARNING,
        r"outcomes\.csv: 2 rows with fractional token counts in column 'input_tokens' \(line 5, line 11\); "
        r"token counts are whole numbers",
    ),
    (
        "an expensive call",
        with_cost_usd(8, 42.0),
        CSV,
        WARNING,
        r"outcomes\.csv: 1 row with calls costing more than \$10 \(up to \$42\) \(line 10\); possible, but check",
    ),
    (
        "two prompts",
        first_prompts(2),
        CSV,
        WARNING,
        rf"outcomes\.csv: only 2 prompts \(4 outcome rows, 2 models\); too few to evaluate a router on \(fewer than {SMALL_PROMPTS}",
    ),
    (
        "empty quality",
        cell("outcomes", 1, "quality", None),
        CSV,
        WARNING,
        r"outcomes\.csv: dropped 1 row with empty quality \(line 3\)",
    ),
]


def test_the_base_dataset_loads_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset(*write(tmp_path, base(), {}))
    assert (data.n_prompts, data.models) == (N_PROMPTS, ("a", "b"))


@pytest.mark.parametrize(
    ("mutate", "suffixes", "expected", "message"), [c[1:] for c in FAULTS], ids=[c[0] for c in FAULTS]
)
def test_bad_data_is_refused_or_warned_naming_file_column_and_row(
    tmp_path: Path, mutate: Callable[[Tables], None], suffixes: dict, expected: type, message: str
) -> None:
    t = base()
    mutate(t)
    paths = write(tmp_path, t, suffixes)
    if expected is DataError:
        with pytest.raises(DataError, match=message) as err:
            load_dataset(*paths)
        assert "\n" not in str(err.value)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(*paths)
    found = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(found) == 1 and re.search(message, found[0]), found
    assert data.n_prompts >= 2 and len(data.models) == 2
