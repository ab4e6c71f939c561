"""The judge grades streamed answers too: the text of the content deltas is gathered as the events pass to
the client (unchanged), and graded once the stream ended with ``data: [DONE]``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from openai_stub import OpenAIStub
from test_judge_sampling import serving, stub, wait_for  # noqa: F401 - stub is a fixture

from router_rl.serve.decision_log import read_logged_bandit_data
from router_rl.serve.judging import StreamText


def test_streamed_answers_are_graded(tmp_path: Path, stub: OpenAIStub) -> None:  # noqa: F811
    server, app = serving(tmp_path, stub, judge_share=1.0)
    ids, bodies = [], []
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(3):
            question = f"streamed question number {i} with a long enough answer"
            payload = {"model": "router", "stream": True, "messages": [{"role": "user", "content": question}]}
            with http.stream("POST", "/v1/chat/completions", json=payload) as r:
                assert r.status_code == 200
                ids.append(r.headers["x-router-decision-id"])
                bodies.append(r.read().decode())
        wait_for(http, "router_rl_judge_grades/ok", 3)
        app.state.service.decision_log.flush()
    assert dict(app.state.judging.graded_by) == {app.state.judging.worker.pid: 3}  # graded by the worker
    for body in bodies:  # the client's stream is whole: every chunk, then [DONE]
        assert body.rstrip().endswith("data: [DONE]")
    judged = [r["json"] for r in stub.requests if r["json"]["model"] == "judge"]
    assert len(judged) == 3
    graded = "\n".join(j["messages"][-1]["content"] for j in judged)
    for i in range(3):  # the whole streamed answer (the stub sends it 8 characters a chunk) reached the judge
        assert f"answer to streamed question number {i} with a long enough answer" in graded
    log = read_logged_bandit_data(tmp_path / "log.sqlite", require_feedback=True)
    assert sorted(log.decision_id) == sorted(ids)
    assert list(log.feedback_source) == ["judge"] * 3 and list(log.quality) == [0.8] * 3


def event(content: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}) + "\n\n"


def test_stream_text_gathers_deltas_across_chunk_boundaries() -> None:
    stream = event("Hello, ") + ": a comment\n\n" + event("wor") + event("ld") + "data: [DONE]\n\n"
    text = StreamText()

    async def body():  # noqa: ANN202
        raw = stream.encode()
        for i in range(0, len(raw), 7):  # chunks cut through lines and multi-byte boundaries alike
            yield raw[i : i + 7]

    async def relay() -> bytes:
        return b"".join([c async for c in text.relay(body())])

    assert asyncio.run(relay()) == stream.encode()  # passed through unchanged
    assert text.answer() == "Hello, world"
    unfinished = StreamText()
    unfinished.feed(event("half an answer"))
    assert unfinished.answer() is None  # no [DONE]: the stream broke
    broken = StreamText()
    broken.feed(
        event("partial") + "\ndata: " + json.dumps({"error": {"message": "upstream failed"}}) + "\n\n"
    )
    broken.feed("data: [DONE]\n\n")
    assert broken.answer() is None
