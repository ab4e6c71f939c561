"""``router-rl collect``: a team's own prompts -> candidate models' answers -> judge grades -> an outcomes table.

For every prompt and candidate model, the model is called over its OpenAI-compatible endpoint (streaming, to
measure the time to first token and the total latency; token usage as the endpoint reports it), the judge
grades the answer (``router_rl.judge``), and the result is appended to a journal. The journal is the source of
truth; the data-contract tables are rebuilt from it at the end of every run (and on Ctrl-C):

    OUT/results.jsonl    append-only journal: one JSON record per answer, grade or failure, fsynced when written
    OUT/outcomes.csv     prompt_id, model, quality, score_1_10, input_tokens, output_tokens, latency_s, ttft_s, judge
    OUT/prompts.jsonl    prompt_id, prompt
    OUT/models.csv       the candidates' catalog rows; ttft_s and output_tokens_per_s replaced by measured medians

``router-rl train data=custom data.outcomes=OUT/outcomes.csv data.prompts=OUT/prompts.jsonl
data.models=OUT/models.csv`` trains on it.

Safe to interrupt and rerun: a record is acknowledged once it is fsynced to the journal. A rerun skips every
(prompt, model) that has an answer to the same prompt text and a grade of that answer by the same judge
set-up, re-judges answers that have no grade yet (without calling the model again), and retries failures
(up to ``max_failures`` per pair across runs). A half-written last line from a killed run is cut off on the
next start. Pairs are never duplicated: the tables hold one row per (prompt_id, model).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from router_rl.judge import ChatClient, ChatError, Endpoint, Judge, JudgeConfig

CONFIG_MODULE = "pkg://router_rl.configs"
JOURNAL = "results.jsonl"
OUTCOME_COLUMNS = [
    "prompt_id",
    "model",
    "quality",
    "score_1_10",
    "input_tokens",
    "output_tokens",
    "latency_s",
    "ttft_s",
    "judge",
]


class CollectError(ValueError):
    """A user mistake in the collect inputs or config; the message says what and where."""


# ------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Candidate:
    """A candidate model: its name in the tables and the endpoint that answers for it."""

    name: str
    endpoint: Endpoint
    usd_per_1m_input: float
    usd_per_1m_output: float

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.usd_per_1m_input + output_tokens * self.usd_per_1m_output) / 1e6


def load_prompts(path: str | Path, max_prompts: int | None = None) -> pd.DataFrame:
    """The prompts table (``prompt_id``, ``prompt``; other columns kept), validated like the data contract."""
    from router_rl.data import read_table

    df = read_table(path)
    for col in ("prompt_id", "prompt"):
        if col not in df.columns:
            raise CollectError(
                f"{path}: missing column {col!r}; expected prompt_id, prompt; found {list(df.columns)}"
            )
    blank_id = df["prompt_id"].isna() | (df["prompt_id"].astype(str).str.strip() == "")
    blank = df["prompt"].isna() | (df["prompt"].astype(str).str.strip() == "")
    for mask, what in ((blank_id, "prompt_id"), (blank, "prompt")):
        if mask.any():
            raise CollectError(
                f"{path}: record {int(np.flatnonzero(mask)[0]) + 1} has an empty {what}; expected text"
            )
    dup = df["prompt_id"].duplicated()
    if dup.any():
        raise CollectError(
            f"{path}: prompt_id {df['prompt_id'][dup].iloc[0]!r} appears twice; expected each once"
        )
    if max_prompts:
        df = df.iloc[: int(max_prompts)]
    return df.reset_index(drop=True)


def _as_dict(node: Any) -> Any:
    """A plain container from an OmegaConf node (resolved; a missing ``???`` value raises), else ``node``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    return node


def load_candidates(cfg: Mapping[str, Any], catalog: str | None) -> tuple[list[Candidate], pd.DataFrame]:
    """The candidates of the ``candidates`` config and their catalog rows.

    ``candidates.models`` lists names (all answered by ``candidates.base_url``, a gateway) or mappings
    ``{name, base_url, model, api_key_env, usd_per_1m_input, usd_per_1m_output}``; ``candidates.file`` is a
    YAML/JSON file with such a ``models`` list. Prices come from the mapping, else from the ``catalog`` file.
    """
    cfg = _as_dict(cfg)
    entries = list(cfg.get("models") or [])
    if cfg.get("file"):
        import yaml

        path = Path(cfg["file"])
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise CollectError(f"{path}: cannot read the candidates file ({err})") from err
        more = loaded.get("models") if isinstance(loaded, dict) else loaded
        if not isinstance(more, list):
            raise CollectError(f"{path}: expected a list of models (or a mapping with a `models` list)")
        entries += more
    if not entries:
        raise CollectError(
            "no candidate models; set candidates.models=[name,...] (with candidates.base_url) or candidates.file"
        )
    table = None
    if catalog:
        from router_rl.data import load_catalog

        table = load_catalog(catalog).table.set_index("model")
    limits = {
        k: cfg[k]
        for k in (
            "timeout_s",
            "connect_timeout_s",
            "max_retries",
            "backoff_base_s",
            "backoff_max_s",
            "max_retry_after_s",
        )
        if cfg.get(k) is not None
    }
    candidates, rows = [], []
    for i, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = entry.get("name")
        if not name:
            raise CollectError(
                f"candidates.models[{i}]: missing `name`; expected the model's name in the tables"
            )
        base_url = entry.get("base_url") or cfg.get("base_url")
        if not base_url:
            raise CollectError(
                f"candidate {name!r}: no base_url; set candidates.base_url (a gateway) or its own base_url"
            )
        prices = {}
        for col in ("usd_per_1m_input", "usd_per_1m_output"):
            value = entry.get(col)
            if value is None and table is not None and name in table.index:
                value = table.at[name, col]
            if value is None or not np.isfinite(float(value)) or float(value) < 0:
                raise CollectError(
                    f"candidate {name!r}: no {col}; expected it in the catalog ({catalog or 'catalog=... not set'}) "
                    "or in the candidate's entry (0 for a self-hosted model)"
                )
            prices[col] = float(value)
        endpoint = Endpoint(
            base_url=str(base_url),
            model=str(entry.get("model") or name),
            api_key_env=entry.get("api_key_env", cfg.get("api_key_env")),
            max_concurrency=int(cfg.get("concurrency") or 8),
            **limits,
        )
        candidates.append(Candidate(str(name), endpoint, **prices))
        row = dict(table.loc[name]) if table is not None and name in table.index else {}
        row.update({"model": str(name), **prices})
        rows.append(row)
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise CollectError(f"candidate names must be unique, got {names}")
    models = pd.DataFrame(rows)
    return candidates, models[["model", *[c for c in models.columns if c != "model"]]]


# ------------------------------------------------------------------------------------------ journal
def text_sha(text: str) -> str:
    """A short content hash: answers and grades are tied to the exact prompt and answer texts."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prompt_shas(prompts: pd.DataFrame) -> dict[str, str]:
    return {str(p): text_sha(str(t)) for p, t in zip(prompts["prompt_id"], prompts["prompt"], strict=True)}


class Journal:
    """An append-only JSONL file of acknowledged records, read back into per-pair state.

    A record is acknowledged when :meth:`append` returns: it is written, flushed and fsynced. On open a
    torn last line (a kill mid-write) is cut off, so the next append starts on a clean line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.grades: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.failures: Counter[tuple[str, str]] = Counter()
        self.answer_usd = self.judge_usd = 0.0  # every dollar recorded, superseded records included
        self.repaired = 0
        self._repair_and_load()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the journal

    def _repair_and_load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last record: never acknowledged, drop it
            self.repaired = len(data) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        for n, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise CollectError(
                    f"{self.path}: line {n} is not a collect record ({err}); expected one JSON object per line"
                ) from err

    def _apply(self, rec: dict[str, Any]) -> None:
        key = (str(rec["prompt_id"]), str(rec["model"]))
        kind = rec["type"]
        if kind == "answer":
            self.answers[key] = rec
            self.answer_usd += float(rec["cost_usd"])
        elif kind == "grade":
            self.grades[(*key, rec["grader"])] = rec
            self.judge_usd += float(rec.get("judge_cost_usd") or 0.0)
        elif kind == "failure":
            self.failures[key] += 1
            self.judge_usd += float(rec.get("judge_cost_usd") or 0.0)
        else:
            raise ValueError(f"unknown record type {kind!r}")

    def append(self, rec: dict[str, Any]) -> None:
        self._file.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._apply(rec)

    def answer(self, key: tuple[str, str], prompt_sha: str) -> dict[str, Any] | None:
        """The latest answer of ``key`` to the prompt text whose hash is ``prompt_sha`` (None if none: an
        edited prompt is answered again)."""
        rec = self.answers.get(key)
        return rec if rec is not None and rec.get("prompt_sha256") == prompt_sha else None

    def grade(self, key: tuple[str, str], grader: str) -> dict[str, Any] | None:
        """The grade by ``grader`` of ``key``'s latest answer (None if that answer has none)."""
        rec, ans = self.grades.get((*key, grader)), self.answers.get(key)
        ok = rec is not None and ans is not None and rec.get("answer_sha256") == ans.get("answer_sha256")
        return rec if ok else None

    def done(self, key: tuple[str, str], grader: str, prompt_sha: str) -> bool:
        return self.answer(key, prompt_sha) is not None and self.grade(key, grader) is not None

    def spent(self) -> tuple[float, float]:
        """(answer dollars, judge dollars) over every acknowledged record (all runs)."""
        return self.answer_usd, self.judge_usd

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------------------ running
@dataclass
class Settings:
    """How a collect run calls the candidates and the judge (from the config)."""

    mode: str = "single"
    reference_model: str | None = None
    baseline_model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = 0.0
    max_tokens: int | None = 1024
    stream: bool = True
    concurrency: int = 8
    retry_passes: int = 1
    max_failures: int = 3
    progress: bool = True


def grader_id(judge: JudgeConfig, s: Settings) -> str:
    """What a grade depends on besides the answer: the judge and how it was asked."""
    extra = f"ref={s.reference_model}" if s.mode == "single" else f"baseline={s.baseline_model}"
    return f"{judge.id}|{s.mode}|{extra}"


class Collector:
    """Runs the (prompt, model) pairs through the candidates and the judge, journaling every result."""

    def __init__(
        self,
        prompts: pd.DataFrame,
        candidates: list[Candidate],
        judge: Judge,
        journal: Journal,
        settings: Settings,
        *,
        http: httpx.AsyncClient,
    ) -> None:
        self.prompts = dict(zip(prompts["prompt_id"].astype(str), prompts["prompt"].astype(str), strict=True))
        self.prompt_sha = {pid: text_sha(text) for pid, text in self.prompts.items()}
        self.candidates = {c.name: c for c in candidates}
        self.clients = {c.name: ChatClient(c.endpoint, http=http) for c in candidates}
        self.judge, self.journal, self.s = judge, journal, settings
        self.grader = grader_id(judge.config, settings)
        for role, name in (
            ("reference_model", settings.reference_model),
            ("baseline_model", settings.baseline_model),
        ):
            if name is not None and name not in self.candidates:
                raise CollectError(
                    f"judge.{role} is {name!r}; expected one of the candidates {list(self.candidates)}"
                )
        if settings.mode not in ("single", "pairwise"):
            raise CollectError(f"judge.mode must be single or pairwise, got {settings.mode!r}")
        if settings.mode == "pairwise" and settings.baseline_model is None:
            raise CollectError(
                "judge.mode=pairwise needs judge.baseline_model: the candidate every answer is compared with"
            )
        self._answer_tasks: dict[tuple[str, str], asyncio.Task] = {}
        self.run_answer_usd = self.run_judge_usd = 0.0
        self.run_failures = 0
        self.bar = None

    def _postfix(self) -> None:
        if self.bar is not None:
            answers, judge = self.journal.spent()
            self.bar.set_postfix_str(
                f"cost ${answers + judge:.4f} (answers ${answers:.4f} + judge ${judge:.4f}; this run "
                f"${self.run_answer_usd + self.run_judge_usd:.4f}) failed {self.run_failures}",
                refresh=False,
            )

    def _fail(self, key: tuple[str, str], stage: str, kind: str, error: str, **extra: Any) -> None:
        self.run_failures += 1
        self.journal.append(
            {
                "type": "failure",
                "prompt_id": key[0],
                "model": key[1],
                "stage": stage,
                "kind": kind,
                "error": error,
                "grader": self.grader,
                "at": time.time(),
                **extra,
            }
        )

    # ---------------------------------------------------------------- answers
    async def answer(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The journaled answer of ``key``, calling the model once if there is none (shared by concurrent askers)."""
        known = self.journal.answer(key, self.prompt_sha[key[0]])
        if known is not None:
            return known
        task = self._answer_tasks.get(key)
        if task is None:
            task = self._answer_tasks[key] = asyncio.ensure_future(self._call_model(key))
        return await asyncio.shield(task)

    async def _call_model(self, key: tuple[str, str]) -> dict[str, Any] | None:
        prompt_id, model = key
        cand = self.candidates[model]
        messages = ([{"role": "system", "content": self.s.system_prompt}] if self.s.system_prompt else []) + [
            {"role": "user", "content": self.prompts[prompt_id]}
        ]
        params = {
            k: v
            for k, v in (("temperature", self.s.temperature), ("max_tokens", self.s.max_tokens))
            if v is not None
        }
        try:
            res = await self.clients[model].complete(messages, stream=self.s.stream, **params)
        except ChatError as err:
            self._fail(key, "answer", err.kind, str(err), attempts=err.attempts)
            self._answer_tasks.pop(key, None)  # a later pass may try again
            return None
        cost = cand.cost(res.prompt_tokens, res.completion_tokens)
        rec = {
            "type": "answer",
            "prompt_id": prompt_id,
            "model": model,
            "answer": res.text,
            "prompt_sha256": self.prompt_sha[prompt_id],
            "answer_sha256": text_sha(res.text),
            "ttft_s": res.ttft_s,
            "latency_s": res.latency_s,
            "input_tokens": res.prompt_tokens,
            "output_tokens": res.completion_tokens,
            "usage_reported": res.usage_reported,
            "cost_usd": cost,
            "attempts": res.attempts,
            "endpoint_model": res.model,
            "at": time.time(),
        }
        self.journal.append(rec)
        self.run_answer_usd += cost
        return rec

    # ---------------------------------------------------------------- one pair
    async def process(self, key: tuple[str, str]) -> bool:
        """Answer and grade one pair; True when it ends done."""
        prompt_id, model = key
        ans = await self.answer(key)
        if ans is None:
            return False
        prompt = self.prompts[prompt_id]
        grade: dict[str, Any] = {
            "type": "grade",
            "prompt_id": prompt_id,
            "model": model,
            "grader": self.grader,
            "judge": self.judge.config.endpoint.model,
            "mode": self.s.mode,
            "answer_sha256": ans["answer_sha256"],
        }
        if self.s.mode == "pairwise" and model == self.s.baseline_model:
            self.journal.append(
                {
                    **grade,
                    "quality": 0.5,
                    "score_1_10": None,
                    "judge_cost_usd": 0.0,
                    "note": "baseline (0.5 by definition)",
                }
            )
            return True
        other_name = self.s.reference_model if self.s.mode == "single" else self.s.baseline_model
        other = None
        if other_name is not None:
            other = await self.answer((prompt_id, other_name))
            if other is None:
                self._fail(key, "reference", "error", f"no answer from {other_name!r} to grade against")
                return False
        if self.s.mode == "single":
            verdict = await self.judge.grade(
                prompt, ans["answer"], reference=None if other is None else other["answer"]
            )
            cost, ok = verdict.cost_usd, verdict.ok
            fields = {"quality": verdict.quality, "score_1_10": verdict.score, "cached": verdict.cached}
            reason, raw, status = verdict.reason, verdict.raw, verdict.status
        else:
            pv = await self.judge.compare(prompt, ans["answer"], other["answer"])
            cost, ok = pv.cost_usd, pv.ok
            fields = {
                "quality": pv.quality,
                "score_1_10": None,
                "consistent": pv.consistent,
                "cached": all(v.cached for v in pv.orders),
            }
            reason, raw, status = pv.reason, " || ".join(v.raw for v in pv.orders), pv.status
        self.run_judge_usd += cost
        if not ok:
            self._fail(key, "judge", status, reason, raw=raw[-2000:], judge_cost_usd=cost)
            return False
        self.journal.append({**grade, **fields, "judge_cost_usd": cost, "at": time.time()})
        return True

    async def _worker(self, queue: asyncio.Queue, failed: list[tuple[str, str]]) -> None:
        while True:
            try:
                key = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if await self.process(key):
                if self.bar is not None:
                    self.bar.update(1)
            else:
                failed.append(key)
            self._postfix()
            if self.bar is not None:
                self.bar.refresh()

    async def run(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Process ``keys`` with ``concurrency`` workers, then ``retry_passes`` more passes over the failed
        ones; returns the keys still not done."""
        pending = list(keys)
        for _ in range(1 + max(0, int(self.s.retry_passes))):
            if not pending:
                break
            queue: asyncio.Queue = asyncio.Queue()
            for key in pending:
                queue.put_nowait(key)
            failed: list[tuple[str, str]] = []
            n_workers = max(1, min(int(self.s.concurrency), len(pending)))
            await asyncio.gather(*(self._worker(queue, failed) for _ in range(n_workers)))
            failed_set = set(failed)
            pending = [k for k in pending if k in failed_set]
        return pending


# ------------------------------------------------------------------------------------------- tables
def _median(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


def write_tables(
    journal: Journal, prompts: pd.DataFrame, models: pd.DataFrame, grader: str, out: str | Path
) -> dict[str, Path]:
    """(Re)write outcomes.csv, prompts.jsonl and models.csv from the journal's acknowledged records.

    One outcome row per (prompt, model) with an answer and a grade by ``grader``, in prompt then model order.
    Files are replaced atomically (written to a temporary name, then renamed).
    """
    out = Path(out)
    order = {m: i for i, m in enumerate(models["model"])}
    prompt_order = {p: i for i, p in enumerate(prompts["prompt_id"].astype(str))}
    shas = prompt_shas(prompts)
    rows = []
    for (pid, model), ans in journal.answers.items():
        if model not in order or pid not in prompt_order or not journal.done((pid, model), grader, shas[pid]):
            continue
        grade = journal.grade((pid, model), grader)
        rows.append(
            {
                "prompt_id": pid,
                "model": model,
                "quality": grade["quality"],
                "score_1_10": grade.get("score_1_10"),
                "input_tokens": ans["input_tokens"],
                "output_tokens": ans["output_tokens"],
                "latency_s": ans["latency_s"],
                "ttft_s": ans["ttft_s"],
                "judge": grade.get("judge"),
            }
        )
    outcomes = pd.DataFrame(rows, columns=OUTCOME_COLUMNS)
    if len(outcomes):
        outcomes = outcomes.sort_values(
            ["prompt_id", "model"], key=lambda s: s.map(prompt_order if s.name == "prompt_id" else order)
        )
    catalog = models.copy()
    for col in ("ttft_s", "output_tokens_per_s"):
        if col not in catalog.columns:
            catalog[col] = np.nan
    catalog["latency_basis"] = catalog.get("latency_basis", pd.Series([None] * len(catalog), dtype=object))
    for i, model in enumerate(catalog["model"]):
        answers = [a for (_, m), a in journal.answers.items() if m == model]
        if not answers:
            continue
        ttft = _median([a["ttft_s"] for a in answers])
        speed = _median(
            [
                a["output_tokens"] / max(a["latency_s"] - (a["ttft_s"] or 0.0), 1e-3)
                for a in answers
                if a["output_tokens"]
            ]
        )
        if math.isfinite(ttft):
            catalog.loc[i, "ttft_s"] = ttft
        if math.isfinite(speed):
            catalog.loc[i, "output_tokens_per_s"] = speed
        catalog.loc[i, "latency_basis"] = f"measured median of {len(answers)} answers"
    keep = [c for c in prompts.columns if c in ("prompt_id", "prompt", "source_benchmark")]
    paths = {"outcomes": out / "outcomes.csv", "prompts": out / "prompts.jsonl", "models": out / "models.csv"}

    def atomic(path: Path, write) -> None:
        tmp = path.with_name(path.name + ".tmp")
        write(tmp)
        os.replace(tmp, path)

    atomic(paths["outcomes"], lambda p: outcomes.to_csv(p, index=False))
    atomic(
        paths["prompts"], lambda p: prompts[keep].to_json(p, orient="records", lines=True, force_ascii=False)
    )
    atomic(paths["models"], lambda p: catalog.to_csv(p, index=False))
    return paths


# --------------------------------------------------------------------------------------------- run
def run(cfg: Mapping[str, Any]) -> int:
    """One collect run from a composed ``collect`` config; returns the exit status (0 all done, 1 some pairs
    still failing, 130 interrupted)."""
    cfg = _as_dict(cfg)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the progress bar
    out = Path(cfg["out"])
    prompts = load_prompts(cfg["prompts"], cfg.get("max_prompts"))
    candidates, models = load_candidates(cfg["candidates"], cfg.get("catalog"))
    judge_cfg = dict(cfg["judge"])
    judge_config = JudgeConfig.from_config(judge_cfg)
    c = cfg["candidates"]
    settings = Settings(
        mode=judge_cfg.get("mode", "single"),
        reference_model=judge_cfg.get("reference_model"),
        baseline_model=judge_cfg.get("baseline_model"),
        system_prompt=c.get("system_prompt"),
        temperature=c.get("temperature"),
        max_tokens=c.get("max_tokens"),
        stream=bool(c.get("stream", True)),
        concurrency=int(c.get("concurrency") or 8),
        retry_passes=int(cfg.get("retry_passes", 1)),
        max_failures=int(cfg.get("max_failures", 3)),
        progress=bool(cfg.get("progress", True)),
    )
    grader = grader_id(judge_config, settings)
    shas = prompt_shas(prompts)
    journal = Journal(out / JOURNAL)
    if journal.repaired:
        print(
            f"[router-rl collect] {out / JOURNAL}: cut off a torn last record ({journal.repaired} bytes) left by an interrupted run",
            file=sys.stderr,
        )
    status = {"code": 0}
    judge_holder: dict[str, Any] = {}

    async def main() -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=max(1, settings.concurrency) * 2)
        async with httpx.AsyncClient(limits=limits) as http, Judge(judge_config) as judge:
            judge_holder["judge"] = judge
            collector = Collector(prompts, candidates, judge, journal, settings, http=http)
            keys = [(str(p), m.name) for p in prompts["prompt_id"] for m in candidates]
            todo = [k for k in keys if not journal.done(k, grader, shas[k[0]])]
            given_up = [k for k in todo if journal.failures[k] >= settings.max_failures]
            todo = [k for k in todo if journal.failures[k] < settings.max_failures]
            judge_holder["given_up"] = given_up
            print(
                f"[router-rl collect] {len(prompts)} prompts x {len(candidates)} models: {len(keys) - len(todo) - len(given_up)} "
                f"done earlier, {len(todo)} to do"
                + (f", {len(given_up)} skipped after {settings.max_failures} failures" if given_up else ""),
                file=sys.stderr,
            )
            from tqdm.auto import tqdm

            with tqdm(
                total=len(keys),
                initial=len(keys) - len(todo) - len(given_up),
                desc="collect",
                unit="pair",
                disable=not settings.progress,
                dynamic_ncols=True,
                file=sys.stderr,
            ) as bar:
                collector.bar = bar
                collector._postfix()
                left = await collector.run(todo)
            return left + given_up

    left: list[tuple[str, str]] = []
    try:
        left = asyncio.run(main())
        status["code"] = 1 if left else 0
    except KeyboardInterrupt:
        status["code"] = 130
        print(
            "\n[router-rl collect] interrupted: every acknowledged result is in the journal; rerun the same command to resume",
            file=sys.stderr,
        )
    finally:
        paths = write_tables(journal, prompts, models, grader, out)
        journal.close()
    n_done = sum(
        1
        for p in prompts["prompt_id"]
        for m in models["model"]
        if journal.done((str(p), m), grader, shas[str(p)])
    )
    answers_usd, judge_usd = journal.spent()
    stats = judge_holder["judge"].stats if "judge" in judge_holder else None
    print(
        f"[router-rl collect] {n_done} of {len(prompts) * len(models)} pairs done; spent ${answers_usd:.4f} on answers, "
        f"${judge_usd:.4f} on the judge (all runs)",
        file=sys.stderr,
    )
    if stats is not None:
        print(
            f"[router-rl collect] judge this run: {stats.calls} calls, {stats.cache_hits} cache hits, "
            f"{stats.unparsed} unparsed, {stats.errors} errors, {stats.prompt_tokens + stats.completion_tokens} tokens, "
            f"${stats.cost_usd:.4f}",
            file=sys.stderr,
        )
    if left:
        print(
            f"[router-rl collect] {len(left)} pairs still failing (see the failure records in {out / JOURNAL}); "
            "rerun to retry them",
            file=sys.stderr,
        )
    print(f"[router-rl collect] wrote {paths['outcomes']}, {paths['prompts']}, {paths['models']}")
    print(
        f"[router-rl collect] train on it: router-rl train data=custom data.outcomes={paths['outcomes']} "
        f"data.prompts={paths['prompts']} data.models={paths['models']}"
    )
    return status["code"]


# -------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``router-rl collect [hydra overrides]`` (``--help`` lists every option)."""
    import hydra
    from omegaconf import DictConfig
    from omegaconf.errors import MissingMandatoryValue

    from router_rl.types import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    result = {"code": 0}

    @hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="collect")
    def _main(cfg: DictConfig) -> None:
        try:
            result["code"] = run(cfg)
        except MissingMandatoryValue as err:
            key = getattr(err, "full_key", None) or str(err).splitlines()[0]
            print(
                f"router-rl: error: {key} is not set; set it on the command line: {key}=...", file=sys.stderr
            )
            result["code"] = 2
        except (CollectError, DataError, ValueError, FileNotFoundError, ChatError) as err:
            print(f"router-rl: error: {err}", file=sys.stderr)
            result["code"] = 2

    saved = sys.argv
    sys.argv = ["router-rl collect", *argv]
    try:
        _main()
    finally:
        sys.argv = saved
    return result["code"]


if __name__ == "__main__":
    sys.exit(main())
