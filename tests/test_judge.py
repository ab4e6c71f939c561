"""The LLM judge and its HTTP client, over real HTTP on loopback against the OpenAI-compatible stub."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
from openai_stub import OpenAIStub

from router_rl.judge import (
    ChatClient,
    ChatError,
    Endpoint,
    Judge,
    JudgeConfig,
    backoff_delay,
    parse_preference,
    parse_rating,
    parse_retry_after,
)

FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "timeout_s": 5.0}


@pytest.fixture(scope="module")
def server():
    with OpenAIStub(models=["judge", "m"], backlog=64) as started:
        yield started


@pytest.fixture
def stub(server: OpenAIStub) -> OpenAIStub:
    """The module's stub server, reset to its defaults (one server: starting and stopping one costs ~0.5 s)."""
    server.reply = lambda req: f"echo: {req['messages'][-1].get('content', '')}"
    server.chunk_delay = 0.0
    server.requests.clear()
    server._failures.clear()
    return server


def run(coro):
    return asyncio.run(coro)


def endpoint(stub: OpenAIStub, **kw) -> Endpoint:
    return Endpoint(base_url=stub.base_url, model="judge", **{**FAST, **kw})


def make_judge(stub: OpenAIStub, cache: Path | None = None, **kw) -> Judge:
    cfg = JudgeConfig(
        endpoint=endpoint(stub, **kw.pop("endpoint", {})),
        usd_per_1m_input=2.0,
        usd_per_1m_output=10.0,
        cache=str(cache) if cache else None,
        **kw,
    )
    return Judge(cfg, client=ChatClient(cfg.endpoint, rng=random.Random(0)))


def messages(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "score", "reason"),
    [
        ("The answer is fine.\nRating: [[7]]", 7.0, ""),
        ("Rating: [[ 8.5 ]]", 8.5, ""),
        ("[[10]]", 10.0, ""),
        ("Rating: [[6/10]]", 6.0, ""),
        ("Explanation... Score: 4/10", 4.0, ""),
        ("I would give it a rating of 3.", 3.0, ""),
        ("Overall: 9 out of 10.", 9.0, ""),
        ("Mentions 5 points. Rating: [[2]]", 2.0, ""),  # the [[ ]] verdict wins over other numbers
        ("Rating: [[3]] ... on reflection [[8]]", None, "conflicting ratings 3, 8"),
        ("Rating: [[0]]", None, "outside [1, 10]"),
        ("Rating: [[11]]", None, "outside [1, 10]"),
        ("A thoughtful answer without any verdict.", None, "no rating found"),
        ("", None, "empty verdict"),
    ],
)
def test_parse_rating(text: str, score: float | None, reason: str) -> None:
    parsed = parse_rating(text)
    assert parsed.value == score
    assert reason in parsed.reason
    assert (parsed.reason == "") == (score is not None)


@pytest.mark.parametrize(
    ("text", "value", "reason"),
    [
        ("A is more detailed. [[A]]", "A", ""),
        ("Final verdict: [[ B ]]", "B", ""),
        ("Equally good: [[C]]", "C", ""),
        ("[[A]] no wait [[B]]", None, "conflicting verdicts A, B"),
        ("Assistant A is better.", None, "no verdict found"),
        ("   ", None, "empty verdict"),
    ],
)
def test_parse_preference(text: str, value: str | None, reason: str) -> None:
    parsed = parse_preference(text)
    assert parsed.value == value and reason in parsed.reason


def test_retry_after_and_backoff() -> None:
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    rng = random.Random(0)
    sleeps = [backoff_delay(a, base_s=1.0, max_s=8.0, rng=rng) for a in range(6)]
    for attempt, s in enumerate(sleeps):  # equal jitter: in [d/2, d], d = min(8, 2^attempt)
        d = min(8.0, 2.0**attempt)
        assert d / 2 <= s <= d
    # Retry-After is honoured (never shorter), capped, with at most 10% jitter
    assert 3.0 <= backoff_delay(0, base_s=1.0, max_s=8.0, retry_after_s=3.0, rng=rng) <= 3.3
    assert (
        5.0
        <= backoff_delay(0, base_s=1.0, max_s=8.0, retry_after_s=99.0, max_retry_after_s=5.0, rng=rng)
        <= 5.5
    )


# ------------------------------------------------------------------------------------------- client
def test_client_answers_with_usage_and_api_key(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_RL_TEST_KEY", "sk-test-123")

    async def go():
        async with ChatClient(endpoint(stub, api_key_env="ROUTER_RL_TEST_KEY")) as client:
            return await client.complete(messages("what is 2+2?"), temperature=0.0, max_tokens=64)

    res = run(go())
    assert res.text == "echo: what is 2+2?"
    assert res.usage_reported and res.completion_tokens == len("echo: what is 2+2?") // 4
    assert res.attempts == 1 and res.ttft_s is None and res.latency_s > 0
    req = stub.requests[0]
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert req["json"]["model"] == "judge" and req["json"]["max_tokens"] == 64


def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_RL_NO_SUCH_KEY", raising=False)
    with pytest.raises(ChatError, match="ROUTER_RL_NO_SUCH_KEY.*is not set"):
        ChatClient(Endpoint(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="ROUTER_RL_NO_SUCH_KEY"))


def test_streaming_measures_time_to_first_token(stub: OpenAIStub) -> None:
    stub.reply = lambda req: "x" * 48  # 6 chunks of 8 characters
    stub.chunk_delay = 0.05

    async def go():
        async with ChatClient(endpoint(stub)) as client:
            return await client.complete(messages(), stream=True)

    res = run(go())
    assert res.text == "x" * 48 and res.usage_reported and res.completion_tokens == 12
    assert res.ttft_s is not None and res.ttft_s > 0
    assert res.latency_s >= res.ttft_s + 5 * 0.05 * 0.9  # five pauses after the first chunk
    assert stub.requests[0]["json"]["stream"] is True
    assert stub.requests[0]["json"]["stream_options"] == {"include_usage": True}


def test_429_honours_retry_after(stub: OpenAIStub) -> None:
    stub.fail_next(429, retry_after=0.3)
    client_holder = {}

    async def go():
        async with ChatClient(endpoint(stub)) as client:
            client_holder["c"] = client
            return await client.complete(messages())

    res = run(go())
    t = [r["t"] for r in stub.requests]
    assert res.attempts == 2 and len(t) == 2
    assert t[1] - t[0] >= 0.3  # observed on the server: the retry came after Retry-After
    stats = client_holder["c"].stats
    assert (
        stats.retries == 1 and 0.3 <= stats.retry_sleeps[0] <= 0.33 and "HTTP 429" in stats.retry_reasons[0]
    )


def test_5xx_backoff_grows_exponentially_then_succeeds(stub: OpenAIStub) -> None:
    for status in (500, 503, 502):
        stub.fail_next(status)
    holder = {}

    async def go():
        async with ChatClient(
            endpoint(stub, backoff_base_s=0.05, backoff_max_s=1.0), rng=random.Random(1)
        ) as c:
            holder["c"] = c
            return await c.complete(messages("again"))

    res = run(go())
    assert res.attempts == 4 and res.text == "echo: again"
    t = [r["t"] for r in stub.requests]
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    sleeps = holder["c"].stats.retry_sleeps
    for attempt, (gap, sleep) in enumerate(zip(gaps, sleeps, strict=True)):
        d = 0.05 * 2**attempt
        assert d / 2 <= sleep <= d and gap >= sleep * 0.95
    assert sleeps[2] > sleeps[0]  # 0.1-0.2 s after the third failure vs 0.025-0.05 s after the first


def test_timeout_and_malformed_are_retried(stub: OpenAIStub) -> None:
    stub.fail_next("timeout", delay=0.6)
    stub.fail_next("malformed")
    answered, both = [], threading.Event()

    def reply(req) -> str:  # called by the retry that succeeds and, after its stall, by the timed-out request
        answered.append(req)
        if len(answered) == 2:
            both.set()
        return "echo: hello"

    stub.reply = reply

    async def go():
        async with ChatClient(endpoint(stub, timeout_s=0.2)) as client:
            res = await client.complete(messages())
            return res, client.stats

    res, stats = run(go())
    assert res.attempts == 3 and res.text == "echo: hello"
    assert [r.split(" ")[0] for r in stats.retry_reasons] == ["timeout", "malformed"]
    assert both.wait(5)  # the stalled request has finished on the server: nothing leaks into the next test


def test_client_gives_up_with_a_clear_error(stub: OpenAIStub) -> None:
    for _ in range(3):
        stub.fail_next(503)

    async def go():
        async with ChatClient(endpoint(stub, max_retries=2)) as client:
            await client.complete(messages())

    with pytest.raises(ChatError, match=r"gave up after 3 attempts; last error: HTTP 503") as info:
        run(go())
    assert info.value.attempts == 3 and info.value.status == 503 and len(stub.requests) == 3

    stub.fail_next(400)  # a client error is not retried

    async def bad():
        async with ChatClient(endpoint(stub)) as client:
            await client.complete(messages())

    with pytest.raises(ChatError, match="HTTP 400: stub failure 400") as info:
        run(bad())
    assert info.value.attempts == 1 and len(stub.requests) == 4


def test_concurrency_limit_holds(stub: OpenAIStub) -> None:
    live, peak, lock = [0], [0], threading.Lock()

    def slow(req):
        if not req["messages"][-1]["content"].startswith("concurrent-"):
            return "late"  # a stalled request of an earlier test, answered only now: not ours to count
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.1)
        with lock:
            live[0] -= 1
        return "ok"

    stub.reply = slow

    async def go():
        async with ChatClient(endpoint(stub, max_concurrency=3)) as client:
            return await asyncio.gather(*(client.complete(messages(f"concurrent-{i}")) for i in range(10)))

    results = run(go())
    assert len(results) == 10 and 2 <= peak[0] <= 3  # never above the limit, and really concurrent


# -------------------------------------------------------------------------------------------- judge
def rate_by_answer(req) -> str:
    text = req["messages"][-1]["content"]
    return "Thorough and correct. Rating: [[9]]" if "GOOD" in text else "Vague. Rating: [[3]]"


def test_grade_parses_accounts_cost_and_caches(stub: OpenAIStub, tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    stub.reply = rate_by_answer

    async def first():
        async with make_judge(stub, cache) as judge:
            good = await judge.grade("Explain TCP.", "GOOD: a handshake...")
            bad = await judge.grade("Explain TCP.", "it is a protocol")
            return good, bad, judge.stats

    good, bad, stats = run(first())
    assert (good.status, good.score, good.quality) == ("ok", 9.0, 0.9)
    assert (bad.score, bad.quality) == (3.0, 0.3) and not good.cached
    req = stub.requests[0]["json"]
    assert (
        "Explain TCP." in req["messages"][1]["content"]
        and "GOOD: a handshake" in req["messages"][1]["content"]
    )
    assert req["temperature"] == 0.0
    # judge cost from the reported usage and the judge's prices
    usage_in = sum(len(m["content"]) // 4 for m in req["messages"])
    usage_out = len("Thorough and correct. Rating: [[9]]") // 4
    assert good.prompt_tokens == usage_in and good.completion_tokens == usage_out
    assert good.cost_usd == pytest.approx((usage_in * 2.0 + usage_out * 10.0) / 1e6)
    assert stats.calls == 2 and stats.cost_usd == pytest.approx(good.cost_usd + bad.cost_usd)

    async def second():  # a new process would see the same sqlite file
        async with make_judge(stub, cache) as judge:
            again = await judge.grade("Explain TCP.", "GOOD: a handshake...")
            other = await judge.grade("Explain UDP.", "GOOD: a handshake...")  # new prompt: not cached
            return again, other, judge.stats

    again, other, stats = run(second())
    assert again.cached and again.score == 9.0 and again.cost_usd == 0.0
    assert other.cached is False and other.score == 9.0
    assert stats.cache_hits == 1 and stats.calls == 1 and len(stub.requests) == 3


def test_cache_is_keyed_by_judge(stub: OpenAIStub, tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    stub.reply = rate_by_answer

    async def go(model: str):
        cfg = JudgeConfig(endpoint=Endpoint(base_url=stub.base_url, model=model, **FAST), cache=str(cache))
        async with Judge(cfg) as judge:
            return await judge.grade("q", "GOOD")

    assert not run(go("judge-a")).cached
    assert run(go("judge-a")).cached
    assert not run(go("judge-b")).cached  # another judge model never reuses judge-a's verdicts
    assert len(stub.requests) == 2


def test_reference_answer_is_used(stub: OpenAIStub) -> None:
    stub.reply = rate_by_answer

    async def go():
        async with make_judge(stub) as judge:
            return await judge.grade("2+2?", "GOOD 4", reference="4")

    verdict = run(go())
    content = stub.requests[0]["json"]["messages"][1]["content"]
    assert verdict.score == 9.0
    assert "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" in content


def test_unparsable_verdict_is_reasked_then_recorded_never_zero(stub: OpenAIStub, tmp_path: Path) -> None:
    replies = iter(["I like it.", "Rating: [[6]]"])
    stub.reply = lambda req: next(replies)

    async def reasked():
        async with make_judge(stub, tmp_path / "c.sqlite") as judge:
            return await judge.grade("q", "a"), judge.stats

    verdict, stats = run(reasked())
    assert verdict.ok and verdict.score == 6.0 and stats.reasked == 1 and stats.calls == 2
    followup = stub.requests[1]["json"]["messages"]
    assert followup[-2] == {"role": "assistant", "content": "I like it."}
    assert "[[5]]" in followup[-1]["content"]
    assert (
        verdict.prompt_tokens > stub.requests[0]["json"]["messages"][1]["content"].count(" ") // 4
    )  # both calls

    stub.reply = lambda req: "Both fine, hard to say."

    async def hopeless():
        async with make_judge(stub, tmp_path / "c.sqlite") as judge:
            first = await judge.grade("q2", "a2")
            second = await judge.grade("q2", "a2")  # unparsed verdicts are not cached: asked again
            return first, second, judge.stats

    first, second, stats = run(hopeless())
    assert first.status == "unparsed" and first.score is None and first.quality is None
    assert "no rating found" in first.reason and first.raw == "Both fine, hard to say."
    assert first.cost_usd > 0 and not second.cached and stats.unparsed == 2 and stats.calls == 4


def test_unreachable_judge_is_an_error_verdict(stub: OpenAIStub) -> None:
    for _ in range(3):
        stub.fail_next(500)

    async def go():
        async with make_judge(stub, endpoint={"max_retries": 2}) as judge:
            return await judge.grade("q", "a"), judge.stats

    verdict, stats = run(go())
    assert (
        verdict.status == "error" and verdict.quality is None and "gave up after 3 attempts" in verdict.reason
    )
    assert stats.errors == 1 and stats.calls == 0


def pair_reply(prefer: str):
    """A judge that prefers the answer containing ``prefer`` (or always position A when prefer == "A")."""

    def reply(req) -> str:
        text = req["messages"][-1]["content"]
        if prefer == "A":
            return "A looks better. [[A]]"
        a_part = text.split("[The Start of Assistant A's Answer]")[1].split(
            "[The End of Assistant A's Answer]"
        )[0]
        return "[[A]]" if prefer in a_part else "[[B]]"

    return reply


def test_pairwise_asks_both_orders_and_cancels_position_bias(stub: OpenAIStub) -> None:
    stub.reply = pair_reply("STRONG")

    async def go():
        async with make_judge(stub) as judge:
            return await judge.compare("q", "STRONG answer", "weak answer"), await judge.compare(
                "q", "weak answer", "STRONG answer"
            )

    win, loss = run(go())
    assert (win.quality, win.winner, win.consistent) == (1.0, "first", True)
    assert (loss.quality, loss.winner, loss.consistent) == (0.0, "second", True)
    bodies = [r["json"]["messages"][1]["content"] for r in stub.requests[:2]]
    firsts = sorted(b.split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0] for b in bodies)
    assert firsts == ["STRONG answer", "weak answer"]  # each answer was shown in position A once

    stub.reply = pair_reply("A")  # a judge that always picks position A

    async def biased():
        async with make_judge(stub) as judge:
            return await judge.compare("q", "one", "two")

    tie = run(biased())
    assert (tie.quality, tie.winner, tie.consistent) == (0.5, "tie", False)

    stub.reply = lambda req: "no idea"

    async def unparsed():
        async with make_judge(stub, parse_retries=0) as judge:
            return await judge.compare("q", "one", "two")

    bad = run(unparsed())
    assert bad.status == "unparsed" and bad.quality is None and "no verdict found" in bad.reason
