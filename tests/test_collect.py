"""`router-rl collect` over real HTTP on loopback: candidates and judge are OpenAI-compatible stub servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from openai_stub import OpenAIStub

from router_rl.cli import main as cli_main
from router_rl.collect import main as collect_main
from router_rl.data import load_dataset

PRICES = {"big": (10.0, 30.0), "mid": (1.0, 2.0), "small": (0.1, 0.2)}
GRADES = {"big": 9, "mid": 6, "small": 3}


def answer_text(req: dict) -> str:
    return f"[{req['model']}] answer to: {req['messages'][-1]['content']}"


def judge_prompt(req: dict) -> str:
    """The judge prompt of a request (the first user message; a re-ask appends more turns)."""
    return next(m["content"] for m in req["messages"] if m["role"] == "user")


def judge_by_model(req: dict) -> str:
    text = judge_prompt(req)
    answer = text.split("[The Start of Assistant's Answer]\n")[1]
    model = answer[1 : answer.index("]")]
    bump = 1 if "code" in text.split("[Question]\n")[1].split("\n")[0] and model == "small" else 0
    return f"Explanation. Rating: [[{GRADES[model] + bump}]]"


@pytest.fixture(scope="module")
def servers():
    with (
        OpenAIStub(models=list(PRICES), backlog=64) as gateway,
        OpenAIStub(models=["judge"], backlog=64) as judge,
    ):
        yield gateway, judge


@pytest.fixture
def stubs(servers):
    gateway, judge = servers
    for stub, reply in ((gateway, answer_text), (judge, judge_by_model)):
        stub.reply = reply
        stub.requests.clear()
        stub._failures.clear()
        stub.chunk_delay = 0.0
    return gateway, judge


def write_inputs(root: Path, n: int, models: tuple[str, ...] = ("big", "mid", "small")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    topics = ["code", "poetry", "math", "history"]
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(n):
            f.write(
                json.dumps({"prompt_id": f"p{i}", "prompt": f"question {i} about {topics[i % 4]}"}) + "\n"
            )
    rows = ["model,usd_per_1m_input,usd_per_1m_output"] + [
        f"{m},{PRICES[m][0]},{PRICES[m][1]}" for m in models
    ]
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")


def args(
    root: Path, gateway: OpenAIStub, judge: OpenAIStub, models=("big", "mid", "small"), *extra: str
) -> list[str]:
    return [
        f"prompts={root / 'prompts.jsonl'}",
        f"catalog={root / 'catalog.csv'}",
        f"out={root / 'out'}",
        f"candidates.base_url={gateway.base_url}",
        f"candidates.models=[{','.join(models)}]",
        "candidates.backoff_base_s=0.02",
        "candidates.timeout_s=5",
        f"judge.base_url={judge.base_url}",
        "judge.model=judge",
        "judge.api_key_env=null",
        f"judge.cache={root / 'judge.sqlite'}",
        "judge.backoff_base_s=0.02",
        "judge.usd_per_1m_input=2.0",
        "judge.usd_per_1m_output=10.0",
        "progress=true",
        *extra,
    ]


def journal(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "out" / "results.jsonl").read_text().splitlines()]


def pair_of(req: dict, texts: dict[str, str]) -> tuple[str, str]:
    return texts[req["json"]["messages"][-1]["content"]], req["json"]["model"]


# ------------------------------------------------------------------------------------------- tests
def test_collect_writes_the_data_contract_and_retries_failures(tmp_path: Path, stubs, capsys) -> None:
    gateway, judge = stubs
    write_inputs(tmp_path, 6)
    gateway.chunk_delay = 0.01
    gateway.fail_next(429, retry_after=0.2)
    gateway.fail_next(500)
    gateway.fail_next("malformed")
    judge.fail_next(503)
    judge.fail_next("malformed")

    # the judge never gives a verdict for one answer: recorded as a failure, never as a zero
    def undecided_on_one(req: dict) -> str:
        if "[small] answer to: question 4 about" in judge_prompt(req):
            return "I cannot decide."
        return judge_by_model(req)

    judge.reply = undecided_on_one

    code = collect_main(args(tmp_path, gateway, judge, ("big", "mid", "small"), "judge.parse_retries=1"))
    err = capsys.readouterr().err
    assert code == 1  # one pair still failing
    assert "cost $" in err and "judge $" in err  # the progress bar shows the running cost
    assert "17 of 18 pairs done" in err and "1 pairs still failing" in err
    records = journal(tmp_path)
    failures = [r for r in records if r["type"] == "failure"]
    assert failures and all(
        (r["prompt_id"], r["model"], r["stage"]) == ("p4", "small", "judge") for r in failures
    )
    assert failures[0]["kind"] == "unparsed" and "no rating found" in failures[0]["error"]
    assert failures[0]["raw"] == "I cannot decide." and failures[0]["judge_cost_usd"] > 0
    assert len(failures) == 2  # the first pass and the in-run retry pass (retry_passes=1)
    # the 429/500/malformed replies were retried, not recorded as failures
    assert len([r for r in records if r["type"] == "answer"]) == 18
    out = pd.read_csv(tmp_path / "out" / "outcomes.csv")
    assert len(out) == 17 and not ((out.prompt_id == "p4") & (out.model == "small")).any()

    # rerun with a working judge: only the failed pair is judged again, no model is called again
    judge.reply = judge_by_model
    gateway.requests.clear()
    judge.requests.clear()
    assert collect_main(args(tmp_path, gateway, judge)) == 0
    assert gateway.requests == [] and len(judge.requests) == 1
    data = load_dataset(
        tmp_path / "out/outcomes.csv", tmp_path / "out/prompts.jsonl", tmp_path / "out/models.csv"
    )
    assert data.models == ("big", "mid", "small") and data.n_prompts == 6 and data.complete_rows().all()
    np.testing.assert_allclose(data.quality[:, 0], 0.9)
    np.testing.assert_allclose(data.quality[:, 2], [0.4, 0.3, 0.3, 0.3, 0.4, 0.3])  # "code" prompts: small 4
    out = pd.read_csv(tmp_path / "out" / "outcomes.csv")
    assert not out.duplicated(["prompt_id", "model"]).any()
    assert (out.latency_s >= out.ttft_s).all() and (out.latency_s > 0.01).all()  # streamed in chunks
    big = out[out.model == "big"]
    np.testing.assert_allclose(data.cost_usd[:, 0], (big.input_tokens * 10 + big.output_tokens * 30) / 1e6)
    catalog = pd.read_csv(tmp_path / "out" / "models.csv")
    assert (catalog.latency_basis == "measured median of 6 answers").all()
    assert (catalog.ttft_s > 0).all() and (catalog.output_tokens_per_s > 0).all()
    # the judge's cost is accounted in the journal
    grades = [r for r in journal(tmp_path) if r["type"] == "grade"]
    assert len(grades) == 18 and all(r["judge_cost_usd"] > 0 for r in grades if not r["cached"])


def test_reference_answers_and_pairwise_mode(tmp_path: Path, stubs) -> None:
    gateway, judge = stubs
    write_inputs(tmp_path, 3)

    def prefer_big(req) -> str:
        text = judge_prompt(req)
        if "[The Start of Assistant A's Answer]" in text:
            a = text.split("[The Start of Assistant A's Answer]\n")[1]
            return "[[A]]" if a.startswith("[big]") else "[[B]]" if "[big]" in text else "[[C]]"
        return judge_by_model(req)

    judge.reply = prefer_big
    code = collect_main(
        args(
            tmp_path,
            gateway,
            judge,
            ("big", "mid", "small"),
            "judge.mode=pairwise",
            "judge.baseline_model=mid",
        )
    )
    assert code == 0
    out = pd.read_csv(tmp_path / "out" / "outcomes.csv").set_index(["prompt_id", "model"])
    assert (out.xs("big", level="model").quality == 1.0).all()  # beats the baseline in both orders
    assert (out.xs("mid", level="model").quality == 0.5).all()  # the baseline, by definition
    assert (out.xs("small", level="model").quality == 0.5).all()  # a tie: neither answer is big
    assert out.score_1_10.isna().all()
    assert len(gateway.requests) == 9 and len(judge.requests) == 2 * 6  # both orders for 6 pairs

    # reference-guided single grading against mid's answers: new grades, the answers are reused
    gateway.requests.clear()
    assert (
        collect_main(args(tmp_path, gateway, judge, ("big", "mid", "small"), "judge.reference_model=mid"))
        == 0
    )
    assert gateway.requests == []
    bodies = [r["json"]["messages"][1]["content"] for r in judge.requests[12:]]
    assert len(bodies) == 9 and all("[The Start of Reference Answer]\n[mid] answer to:" in b for b in bodies)


def test_interrupted_collect_resumes_with_nothing_lost_or_duplicated(tmp_path: Path, stubs) -> None:
    gateway, judge = stubs
    write_inputs(tmp_path, 10, ("big", "small"))
    texts = {f"question {i} about {['code', 'poetry', 'math', 'history'][i % 4]}": f"p{i}" for i in range(10)}

    def slow(req) -> str:
        time.sleep(0.1)
        return answer_text(req)

    gateway.reply = slow
    cmd = [
        sys.executable,
        "-m",
        "router_rl.cli",
        "collect",
        *args(tmp_path, gateway, judge, ("big", "small")),
    ]
    cmd += ["candidates.concurrency=2", "progress=false"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ)
    )
    try:
        path = tmp_path / "out" / "results.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:  # wait until some pairs are acknowledged
            if path.exists() and path.read_text().count('"type": "grade"') >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    acked = journal(tmp_path)
    acked_answers = {(r["prompt_id"], r["model"]) for r in acked if r["type"] == "answer"}
    acked_grades = {(r["prompt_id"], r["model"]): r["quality"] for r in acked if r["type"] == "grade"}
    assert 4 <= len(acked_grades) < 20
    with open(tmp_path / "out" / "results.jsonl", "a") as f:  # a kill in the middle of a write
        f.write('{"type": "answer", "prompt_id": "p9", "mod')
    n_before = len(gateway.requests)

    assert collect_main(args(tmp_path, gateway, judge, ("big", "small"), "progress=false")) == 0
    called_again = {pair_of(r, texts) for r in gateway.requests[n_before:]}
    assert not called_again & acked_answers  # nothing acknowledged is asked for again
    assert called_again | acked_answers == {(f"p{i}", m) for i in range(10) for m in ("big", "small")}
    records = journal(tmp_path)  # every line parses: the torn record was cut off
    answers = [(r["prompt_id"], r["model"]) for r in records if r["type"] == "answer"]
    grades = {(r["prompt_id"], r["model"]): r["quality"] for r in records if r["type"] == "grade"}
    assert len(answers) == len(set(answers)) == 20 and len(grades) == 20
    assert all(grades[k] == q for k, q in acked_grades.items())
    out = pd.read_csv(tmp_path / "out" / "outcomes.csv")
    assert len(out) == 20 and not out.duplicated(["prompt_id", "model"]).any()


def test_collect_help_and_user_errors(tmp_path: Path, stubs, capsys) -> None:
    gateway, judge = stubs
    assert cli_main(["--help"]) == 0
    assert "collect  call candidate models" in capsys.readouterr().out
    assert cli_main(["collect", "--help"]) == 0  # every key with its documentation (router_rl.config_help)
    help_text = capsys.readouterr().out
    assert "router-rl collect" in help_text and "judge=llm" in help_text
    assert "candidates" in help_text and "max_failures" in help_text
    write_inputs(tmp_path, 2)
    cases = [
        ([a for a in args(tmp_path, gateway, judge) if not a.startswith("prompts=")], "prompts is not set"),
        (args(tmp_path, gateway, judge, ("big", "nano")), "candidate 'nano': no usd_per_1m_input"),
        (
            args(tmp_path, gateway, judge) + ["judge.reference_model=gpt-9"],
            "judge.reference_model is 'gpt-9'",
        ),
        (args(tmp_path, gateway, judge) + ["judge.mode=pairwise"], "needs judge.baseline_model"),
        (
            args(tmp_path, gateway, judge) + ["judge.api_key_env=ROUTER_RL_UNSET_KEY"],
            "'ROUTER_RL_UNSET_KEY' is not set",
        ),
        (args(tmp_path, gateway, judge) + [f"prompts={tmp_path / 'nope.csv'}"], "nope.csv: no such file"),
    ]
    os.environ.pop("ROUTER_RL_UNSET_KEY", None)
    for argv, message in cases:
        code = collect_main(argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (message, err[-1500:])
        assert err.count("router-rl: error:") == 1


def test_train_on_a_collected_table(tmp_path: Path, stubs, cache_dir: Path) -> None:
    gateway, judge = stubs
    write_inputs(tmp_path, 12)
    assert collect_main(args(tmp_path, gateway, judge, ("big", "mid", "small"), "progress=false")) == 0
    out = tmp_path / "out"
    # the command a user runs; one BLAS thread: on 2 busy cores LinUCB's matmuls otherwise spin-wait (~8x CPU)
    single = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = run_cli(
        [
            "train",
            "data=custom",
            f"data.outcomes={out / 'outcomes.csv'}",
            f"data.prompts={out / 'prompts.jsonl'}",
            f"data.models={out / 'models.csv'}",
            "train.steps=96",
            "train.batch_size=16",
            "evaluation.folds=2",
            "evaluation.baselines=[zero_router]",
            "evaluation.cost_weights=[0.0,1.0]",
            "mlflow.enabled=false",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
        env=single,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["n_prompts"] == 12 and set(report["models"]) == {"big", "mid", "small"}
    assert report["models"]["big"]["quality"] == pytest.approx(0.9)
    assert report["oracle"]["quality"] == pytest.approx(0.9)
    assert (tmp_path / "run" / "artifact" / "manifest.json").exists()
    assert "zero_router" in report["policies"]


def test_an_edited_prompt_is_answered_again(tmp_path: Path, stubs) -> None:
    gateway, judge = stubs
    write_inputs(tmp_path, 3, ("big", "small"))
    assert collect_main(args(tmp_path, gateway, judge, ("big", "small"), "progress=false")) == 0
    lines = (tmp_path / "prompts.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"prompt_id": "p1", "prompt": "question 1 about code, reworded"})
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    gateway.requests.clear()
    assert collect_main(args(tmp_path, gateway, judge, ("big", "small"), "progress=false")) == 0
    assert sorted(r["json"]["model"] for r in gateway.requests) == ["big", "small"]
    assert {r["json"]["messages"][-1]["content"] for r in gateway.requests} == {
        "question 1 about code, reworded"
    }
    out = pd.read_csv(tmp_path / "out" / "outcomes.csv")
    assert len(out) == 6 and not out.duplicated(["prompt_id", "model"]).any()
    assert out.set_index(["prompt_id", "model"]).loc[("p1", "small"), "quality"] == 0.4  # now a "code" prompt


def test_ctrl_c_writes_the_tables(tmp_path: Path, stubs) -> None:
    """SIGINT (Ctrl-C) mid-run: the process stops, says how to resume, and the tables hold what was done."""
    gateway, judge = stubs
    write_inputs(tmp_path, 8, ("big", "small"))
    gateway.reply = lambda req: (time.sleep(0.15), answer_text(req))[1]
    cmd = [
        sys.executable,
        "-m",
        "router_rl.cli",
        "collect",
        *args(tmp_path, gateway, judge, ("big", "small")),
    ]
    cmd += ["candidates.concurrency=1", "progress=false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = tmp_path / "out" / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count('"type": "grade"') >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    timer = threading.Timer(30, proc.kill)
    timer.start()
    _, err = proc.communicate()
    timer.cancel()
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err
    out = pd.read_csv(tmp_path / "out" / "outcomes.csv")
    grades = {(r["prompt_id"], r["model"]) for r in journal(tmp_path) if r["type"] == "grade"}
    assert 2 <= len(out) < 16 and set(zip(out.prompt_id, out.model, strict=True)) == grades
