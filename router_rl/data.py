"""Load routing datasets (outcomes, prompts, model catalog) into :class:`RoutingData`, and make splits.

The data contract is in DESIGN.md ("Data contract"). Every contract violation raises :class:`DataError`
with a message of the form ``"<file>: line N: column 'c' is <value>; expected <what>"`` or
``"<file>: missing column 'c'; expected ..."``. ``line N`` is the physical line of the record in a CSV or
JSONL file (1-based; a CSV header is line 1, so the first data record is line 2); Parquet files have no
lines, so their records are named ``row N`` (1-based data row). Rows with an empty quality are dropped
with one counted :class:`DataWarning`.

Beyond the contract's own checks: numeric columns must hold numbers (a boolean, date, time-delta or complex
column is refused naming the column: cast it), a dataset needs at least two models with outcomes (a router
chooses between them), a call costs at most :data:`MAX_COST_USD` and reads or writes at most
:data:`MAX_TOKENS` tokens (more is a units mistake), and a latency is at most :data:`MAX_LATENCY_S`. What is
merely odd is a :class:`DataWarning` naming the first row: a call above :data:`WARN_COST_USD`, fractional
token counts, fewer than :data:`SMALL_PROMPTS` prompts (too few to evaluate a router on).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import warnings
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from router_rl.types import SPLITS, Catalog, DataError, RoutingData

PathLike = str | Path
BUNDLED = {"arena": "arena_bench_v1_gpt4judge", "routellm": "routellm_gpt4_vs_mixtral"}
SUFFIXES = (".csv.gz", ".jsonl.gz", ".csv", ".jsonl", ".parquet")
_STR_COLS = ("prompt_id", "model", "prompt")  # read as text, never as numbers
_EMPTY = {"", "nan", "na", "n/a", "null", "none"}  # spellings of an empty numeric cell
MAX_COST_USD = 1000.0  # per call: above this, cost_usd (or tokens x prices) is an error, not a price
WARN_COST_USD = 10.0  # per call: above this, a warning (possible, but check the units)
MAX_TOKENS = 10_000_000  # per call and direction: above any context window
MAX_LATENCY_S = 86_400.0  # per call: a day
SMALL_PROMPTS = 50  # fewer prompts: a warning that evaluation figures will be noise (a 20% split is < 10)
_NOT_NUMBERS = {"b": "booleans", "M": "dates", "m": "time deltas", "c": "complex numbers", "V": "raw bytes"}
_CSV_OPTIONS = {
    "dtype": dict.fromkeys(_STR_COLS, str),
    "keep_default_na": False,
    "na_values": [""],
    "index_col": False,
}


class DataWarning(UserWarning):
    """Data was usable but something was dropped or repaired; the message says what and how much."""


@dataclass
class _Table:
    """A table read from ``path`` whose index holds each record's position in the file."""

    path: str
    df: pd.DataFrame
    lines: np.ndarray | None  # physical line of each record; None for Parquet

    def at(self, label: int) -> str:
        return f"line {self.lines[label]}" if self.lines is not None else f"row {label + 1}"

    def require(self, cols: tuple[str, ...], expected: str) -> None:
        for col in cols:
            if col not in self.df.columns:
                raise DataError(
                    f"{self.path}: missing column {col!r}; expected {expected}; found {list(self.df.columns)}"
                )

    def fail(self, pos: int, col: str, value: object, expected: str) -> None:
        label, value = int(self.df.index[pos]), "" if _isnull(value) else value
        raise DataError(f"{self.path}: {self.at(label)}: column {col!r} is {value!r}; expected {expected}")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def _read(path: PathLike) -> _Table:
    path = Path(path)
    suffix = _suffix(path)
    if suffix is None:
        raise DataError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a {suffix} table")
    try:
        if suffix.startswith(".csv"):
            with warnings.catch_warnings():  # a record longer than the header must not shift columns
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(path, **_CSV_OPTIONS)
            # A record's line: header + records before it + newlines inside earlier quoted fields.
            nl = [df[c].map(lambda v: v.count("\n") if isinstance(v, str) else 0) for c in df.columns]
            extra = np.sum(nl, axis=0, dtype=int) if nl else np.zeros(len(df), int)
            lines = 2 + np.arange(len(df)) + np.cumsum(extra) - extra
        elif suffix.startswith(".jsonl"):
            df, lines = _read_jsonl(path, gz=suffix.endswith(".gz"))
        else:
            df, lines = pd.read_parquet(path), None
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zlib.error, pd.errors.ParserWarning) as e:
        raise DataError(f"{path}: cannot be read as {suffix} ({type(e).__name__}: {e})") from e
    df = df.reset_index(drop=True)
    for c in _STR_COLS:
        if c in df.columns:
            df[c] = df[c].map(lambda v: v if isinstance(v, str) or _isnull(v) else str(v)).astype(object)
    return _Table(str(path), df, lines)


def _read_jsonl(path: Path, *, gz: bool) -> tuple[pd.DataFrame, np.ndarray]:
    records, lines = [], []
    with gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}: line {n}: not valid JSON ({e.msg}); expected one object per line"
                ) from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {n}: got a JSON {type(obj).__name__}; expected a JSON object")
            records.append(obj)
            lines.append(n)
    return pd.DataFrame.from_records(records), np.asarray(lines, dtype=int)


def _isnull(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def read_table(path: PathLike) -> pd.DataFrame:
    """Read a CSV, CSV.GZ, Parquet, JSONL or JSONL.GZ table, chosen by the file's suffix.

    ``prompt_id``, ``model`` and ``prompt`` are read as strings. Raises :class:`DataError` naming the file for
    a missing file, an unknown suffix or an unparsable file.
    """
    return _read(path).df


def _numeric(tab: _Table, col: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, empty): column ``col`` as floats (NaN where empty); a non-numeric cell raises DataError.

    Only numbers are numbers: a boolean, date or time-delta column (Parquet keeps such dtypes; CSV reads
    True/False as booleans) is refused rather than read as 0/1 or as nanoseconds."""
    s = tab.df[col]
    kind = getattr(s.dtype, "kind", "O")
    if kind in _NOT_NUMBERS:
        raise DataError(
            f"{tab.path}: column {col!r} holds {_NOT_NUMBERS[kind]} (dtype {s.dtype}); expected numbers"
            + ("; cast it to 0/1 numbers if that is what it means" if kind == "b" else "")
        )
    if kind in "iuf":
        vals = s.astype(float).to_numpy()
        return vals, np.isnan(vals)
    st = s.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    empty = st.map(lambda v: _isnull(v) or (isinstance(v, str) and v.lower() in _EMPTY)).to_numpy(bool)
    odd = np.flatnonzero(~empty & ~st.map(lambda v: isinstance(v, str) or _is_number(v)).to_numpy(bool))
    if len(odd):
        v = s.iloc[odd[0]]
        tab.fail(
            odd[0],
            col,
            v,
            "a number" + ("; write 0 or 1, not a boolean" if isinstance(v, (bool, np.bool_)) else ""),
        )
    vals = pd.to_numeric(st.where(~empty, None), errors="coerce").astype(float).to_numpy()
    bad = np.flatnonzero(np.isnan(vals) & ~empty)
    if len(bad):
        tab.fail(bad[0], col, s.iloc[bad[0]], "a number")
    return vals, empty


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check(tab: _Table, col: str, vals: np.ndarray, ok: np.ndarray, expected: str) -> None:
    bad = np.flatnonzero(~ok & ~np.isnan(vals))
    if len(bad):
        v = vals[bad[0]]
        tab.fail(bad[0], col, int(v) if v.is_integer() and abs(v) < 1e15 else float(v), expected)


def _ids(tab: _Table, col: str) -> np.ndarray:
    vals = tab.df[col].to_numpy(object)
    empty = np.flatnonzero([_isnull(v) or not str(v).strip() for v in vals])
    if len(empty):
        tab.fail(empty[0], col, "", f"a non-empty {col}")
    return vals


def _unique(tab: _Table, cols: list[str], expected: str) -> None:
    dup = np.flatnonzero(tab.df.duplicated(cols).to_numpy())
    if len(dup):
        key = tab.df[cols].iloc[dup[0]]
        first = tab.df.index[(tab.df[cols] == key).all(axis=1).to_numpy()][0]
        tab.fail(dup[0], cols[0], key.iloc[0], f"{expected} (this one is also on {tab.at(int(first))})")


def _catalog(tab: _Table) -> Catalog:
    tab.require(
        ("model", "usd_per_1m_input", "usd_per_1m_output"), "model, usd_per_1m_input, usd_per_1m_output"
    )
    models = _ids(tab, "model")
    _unique(tab, ["model"], "each model once")
    table = tab.df.copy()
    limits = {"usd_per_1m_input": 0.0, "usd_per_1m_output": 0.0, "ttft_s": 0.0, "output_tokens_per_s": None}
    for col, low in limits.items():
        vals = _numeric(tab, col)[0] if col in table.columns else np.full(len(table), np.nan)
        ok = np.isfinite(vals) & ((vals >= low) if low is not None else (vals > 0))
        _check(tab, col, vals, ok, "a number >= 0" if low is not None else "a number > 0")
        table[col] = vals
    table.attrs["source"] = tab.path
    return Catalog(
        models=tuple(models),
        usd_per_1m_input=table["usd_per_1m_input"].to_numpy(float),
        usd_per_1m_output=table["usd_per_1m_output"].to_numpy(float),
        ttft_s=table["ttft_s"].to_numpy(float),
        output_tokens_per_s=table["output_tokens_per_s"].to_numpy(float),
        table=table.reset_index(drop=True),
    )


def load_catalog(path: PathLike) -> Catalog:
    """Read and validate a model catalog (``model``, ``usd_per_1m_input``, ``usd_per_1m_output`` required).

    ``ttft_s`` and ``output_tokens_per_s`` are optional (NaN when absent; the simulator fills its priors);
    other columns are kept in ``Catalog.table``. An empty price is allowed (NaN) and only fails when a
    dataset needs it to price token counts. Non-numeric or negative values and duplicate models raise.
    """
    return _catalog(_read(path))


def _name(path: PathLike) -> str:
    p = Path(path)
    suffix = _suffix(p)
    return p.name[: -len(suffix)] if suffix else p.stem


def load_dataset(
    outcomes: PathLike,
    prompts: PathLike,
    models: PathLike | None = None,
    *,
    name: str | None = None,
    catalog: Catalog | None = None,
) -> RoutingData:
    """Load and validate a routing dataset (outcomes, prompts, catalog) into wide :class:`RoutingData`.

    Give the catalog as the ``models`` file or as a ready ``catalog`` (exactly one). Prompts are ordered by
    first appearance in ``outcomes``; models in catalog order (those present in ``outcomes`` only). Cost is
    ``cost_usd`` where given, else ``input_tokens * usd_per_1m_input / 1e6 + output_tokens *
    usd_per_1m_output / 1e6``. Missing (prompt, model) pairs are NaN. ``name`` defaults to the outcomes
    file's stem.
    """
    if (models is None) == (catalog is None):
        raise ValueError("give exactly one of `models` (a catalog file) and `catalog`")
    cat_src = str(models) if models is not None else str(catalog.table.attrs.get("source", "the catalog"))
    cat = _catalog(_read(models)) if models is not None else catalog
    out = _read(outcomes)
    expected = "prompt_id, model, quality and either cost_usd or both input_tokens and output_tokens"
    out.require(("prompt_id", "model", "quality"), expected)
    if "cost_usd" not in out.df:
        missing = [c for c in ("input_tokens", "output_tokens") if c not in out.df]
        out.require(("cost_usd",) if len(missing) == 2 else tuple(missing), expected)

    quality, empty = _numeric(out, "quality")
    if empty.any():
        lines = [out.at(int(i)) for i in out.df.index[empty][:5]]
        warnings.warn(
            f"{out.path}: dropped {empty.sum()} row{'s' if empty.sum() != 1 else ''} with empty quality "
            f"({', '.join(lines)}{', ...' if empty.sum() > 5 else ''})",
            DataWarning,
            stacklevel=2,
        )
        out.df, quality = out.df[~empty], quality[~empty]
    if out.df.empty:
        raise DataError(f"{out.path}: no outcome rows; expected at least one row with a quality")
    _check(out, "quality", quality, (quality >= 0) & (quality <= 1), "a number in [0, 1]")
    pid, mod = _ids(out, "prompt_id"), _ids(out, "model")
    _unique(out, ["prompt_id", "model"], "one row per (prompt_id, model)")

    cols = {}
    for col in ("cost_usd", "input_tokens", "output_tokens", "latency_s"):
        vals = _numeric(out, col)[0] if col in out.df else np.full(len(out.df), np.nan)
        _check(out, col, vals, np.isfinite(vals) & (vals >= 0), "a number >= 0")
        cols[col] = vals
    for col, top, what in (
        (
            "cost_usd",
            MAX_COST_USD,
            f"a cost per call of at most ${MAX_COST_USD:g} (MAX_COST_USD); check the units",
        ),
        ("input_tokens", MAX_TOKENS, f"a token count of at most {MAX_TOKENS:,} per call (MAX_TOKENS)"),
        ("output_tokens", MAX_TOKENS, f"a token count of at most {MAX_TOKENS:,} per call (MAX_TOKENS)"),
        ("latency_s", MAX_LATENCY_S, f"a latency of at most {MAX_LATENCY_S:g} s per call (MAX_LATENCY_S)"),
    ):
        _check(out, col, cols[col], cols[col] <= top, what)
    for col in ("input_tokens", "output_tokens"):
        frac = np.flatnonzero(np.isfinite(cols[col]) & (cols[col] % 1 != 0))
        if len(frac):
            _warn_rows(
                out, frac, f"fractional token counts in column {col!r}", "token counts are whole numbers"
            )
    known = np.isin(mod, cat.models)
    if not known.all():
        out.fail(
            int(np.flatnonzero(~known)[0]),
            "model",
            mod[~known][0],
            f"a model of the catalog {cat_src} "
            "(every model needs a catalog row for its prices and latency priors, even with cost_usd)",
        )
    cost = _cost(out, cols, mod, cat, cat_src)
    priced = np.isnan(cols["cost_usd"])
    too_much = np.flatnonzero(priced & ~(cost <= MAX_COST_USD))
    if len(too_much):
        i = int(too_much[0])
        raise DataError(
            f"{out.path}: {out.at(int(out.df.index[i]))}: input_tokens {cols['input_tokens'][i]:g} and "
            f"output_tokens {cols['output_tokens'][i]:g} of model {mod[i]!r} cost ${cost[i]:.4g} at the prices of "
            f"{cat_src}; expected at most ${MAX_COST_USD:g} per call (MAX_COST_USD): check the token counts and "
            "that prices are USD per 1M tokens"
        )
    high = np.flatnonzero(cost > WARN_COST_USD)
    if len(high):
        _warn_rows(
            out,
            high,
            f"calls costing more than ${WARN_COST_USD:g} (up to ${cost[high].max():.4g})",
            "possible, but check that costs are USD per call and prices USD per 1M tokens",
        )

    order = pd.unique(pid)
    codes = pd.Index(order).get_indexer(pid)
    first_pos = np.unique(codes, return_index=True)[1]
    split = _splits(out, codes, first_pos) if "split" in out.df else None
    texts, groups = _prompt_texts(_read(prompts), order, out, first_pos)
    if "source_benchmark" in out.df:
        groups = out.df["source_benchmark"].to_numpy(object)[first_pos]

    kept = [m for m in cat.models if m in set(mod)]
    if len(kept) < 2:
        listed = f"; the catalog {cat_src} lists {len(cat.models)}" if len(cat.models) < 2 else ""
        raise DataError(
            f"{out.path}: outcomes of {len(kept)} model ({', '.join(kept)}) only{listed}; expected at least 2 "
            "models: a router chooses between models"
        )
    if len(order) < SMALL_PROMPTS:
        warnings.warn(
            f"{out.path}: only {len(order)} prompts ({len(out.df)} outcome rows, {len(kept)} models); too few to "
            f"evaluate a router on (fewer than {SMALL_PROMPTS}: a 20% test split holds about "
            f"{round(0.2 * len(order))}); figures will be noise",
            DataWarning,
            stacklevel=2,
        )
    mcodes = pd.Index(kept).get_indexer(mod)

    def wide(vals: np.ndarray) -> np.ndarray:
        arr = np.full((len(order), len(kept)), np.nan)
        arr[codes, mcodes] = vals
        return arr

    return RoutingData(
        name=name or _name(outcomes),
        prompt_ids=np.asarray(order, dtype=object),
        prompts=texts,
        models=tuple(kept),
        quality=wide(quality),
        cost_usd=wide(cost),
        input_tokens=wide(cols["input_tokens"]),
        output_tokens=wide(cols["output_tokens"]),
        latency_s=wide(cols["latency_s"]),
        split=split,
        catalog=cat.subset(kept),
        groups=groups,
    )


def _warn_rows(tab: _Table, rows: np.ndarray, what: str, hint: str) -> None:
    """One counted DataWarning for the records at positions ``rows``, naming the first few."""
    named = ", ".join(tab.at(int(tab.df.index[i])) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
    warnings.warn(
        f"{tab.path}: {len(rows)} row{'s' if len(rows) != 1 else ''} with {what} ({named}); {hint}",
        DataWarning,
        stacklevel=3,
    )


def _cost(
    out: _Table, cols: dict[str, np.ndarray], mod: np.ndarray, cat: Catalog, cat_src: str
) -> np.ndarray:
    """Dollars per outcome row: ``cost_usd`` where given, else the token counts times the catalog prices."""
    cost = cols["cost_usd"].copy()
    need = np.isnan(cost)
    no_tokens = need & (np.isnan(cols["input_tokens"]) | np.isnan(cols["output_tokens"]))
    if no_tokens.any():
        out.fail(
            int(np.flatnonzero(no_tokens)[0]),
            "cost_usd" if "cost_usd" in out.df else "input_tokens",
            "",
            "a cost: cost_usd, or both input_tokens and output_tokens to price",
        )
    if need.any():
        k = np.array([cat.index(m) for m in mod[need]])
        for col, prices in (
            ("usd_per_1m_input", cat.usd_per_1m_input),
            ("usd_per_1m_output", cat.usd_per_1m_output),
        ):
            if np.isnan(prices[k]).any():
                i = int(np.flatnonzero(need)[np.flatnonzero(np.isnan(prices[k]))[0]])
                raise DataError(
                    f"{cat_src}: model {mod[i]!r} has no {col!r}; expected a price to turn the token counts "
                    f"of {out.path} {out.at(int(out.df.index[i]))} into dollars (that row has no cost_usd)"
                )
        tokens_in, tokens_out = cols["input_tokens"][need], cols["output_tokens"][need]
        cost[need] = (tokens_in * cat.usd_per_1m_input[k] + tokens_out * cat.usd_per_1m_output[k]) / 1e6
    return cost


def _splits(out: _Table, codes: np.ndarray, first_pos: np.ndarray) -> np.ndarray:
    vals = out.df["split"].map(lambda v: v.strip() if isinstance(v, str) else v).to_numpy(object)
    bad = np.flatnonzero(~np.isin(vals, SPLITS))
    if len(bad):
        out.fail(bad[0], "split", out.df["split"].iloc[bad[0]], f"one of {', '.join(SPLITS)}")
    per_prompt = vals[first_pos]
    clash = np.flatnonzero(vals != per_prompt[codes])
    if len(clash):
        i = clash[0]
        first = out.at(int(out.df.index[first_pos[codes[i]]]))
        out.fail(
            i,
            "split",
            vals[i],
            f"one split per prompt; prompt {out.df['prompt_id'].iloc[i]!r} is "
            f"{per_prompt[codes[i]]!r} on {first}",
        )
    return per_prompt.astype("<U5")


def _prompt_texts(
    tab: _Table, order: np.ndarray, out: _Table, first_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """(texts, source_benchmark or None) of the prompts in ``order``, checked against the prompts table."""
    tab.require(("prompt_id", "prompt"), "prompt_id, prompt")
    pid = _ids(tab, "prompt_id")
    _unique(tab, ["prompt_id"], "each prompt_id once")
    where = pd.Index(pid).get_indexer(order)
    if (where < 0).any():
        j = int(np.flatnonzero(where < 0)[0])
        out.fail(first_pos[j], "prompt_id", order[j], f"a prompt_id of the prompts table {tab.path}")
    texts = tab.df["prompt"].to_numpy(object)[where]
    blank = np.flatnonzero([_isnull(t) or not str(t).strip() for t in texts])
    if len(blank):
        tab.fail(where[blank[0]], "prompt", "", f"the text of prompt {order[blank[0]]!r}")
    groups = tab.df["source_benchmark"].to_numpy(object)[where] if "source_benchmark" in tab.df else None
    return texts, groups


def bundled_paths(name: str) -> tuple[Path, Path, Path]:
    """(outcomes, prompts, models.csv) of a bundled dataset (``arena`` or ``routellm``)."""
    if name not in BUNDLED:
        raise DataError(f"unknown bundled dataset {name!r}; expected one of {', '.join(BUNDLED)}")
    root, stem = files("router_rl.datasets"), BUNDLED[name]
    names = (f"{stem}.csv.gz", f"{stem}_prompts.jsonl.gz", "models.csv")
    return tuple(Path(str(root / n)) for n in names)  # type: ignore[return-value]


def load_bundled(name: str = "arena") -> RoutingData:
    """Load a bundled dataset through the same :func:`load_dataset` path as a user's files."""
    return load_dataset(*bundled_paths(name), name=name)


def _hash01(purpose: str, seed: int, ids: np.ndarray) -> np.ndarray:
    """Stable uniform [0, 1) value per id from blake2b of (purpose, seed, id); independent of order."""
    out = np.empty(len(ids))
    for i, pid in enumerate(ids):
        digest = hashlib.blake2b(f"{purpose}\0{seed}\0{pid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2**64
    return out


def assign_splits(
    prompt_ids: np.ndarray | list[str], *, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.2
) -> np.ndarray:
    """(N,) ``train``/``valid``/``test`` per prompt id, from a stable hash of (seed, prompt_id).

    Each id's split depends only on the seed and the id (not on row order or the other ids), so repeated
    ids share a split and adding prompts never moves old ones. Fractions hold in expectation.
    """
    if not (valid_fraction >= 0 and test_fraction >= 0 and valid_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be >= 0 and sum below 1, got {valid_fraction=}, {test_fraction=}")
    u = _hash01("split", seed, np.asarray(prompt_ids, dtype=object))
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + valid_fraction, "valid", "train"))


def kfold_assignments(prompt_ids: np.ndarray | list[str], *, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in [0, k) per prompt id: unique ids sorted by a stable hash of (seed, id) and dealt
    round-robin, so fold sizes differ by at most one prompt; repeated ids share a fold."""
    ids = np.asarray(prompt_ids, dtype=object)
    uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
    if not 2 <= k <= len(uniq):
        raise ValueError(f"k must be in [2, number of prompts = {len(uniq)}], got {k}")
    rank = np.lexsort((uniq, _hash01("kfold", seed, uniq)))
    fold = np.empty(len(uniq), dtype=int)
    fold[rank] = np.arange(len(uniq)) % k
    return fold[inverse.ravel()]
