"""The test stub itself behaves like an OpenAI-compatible server."""

from __future__ import annotations

import json

from openai_stub import OpenAIStub


def test_stub_answers_streams_and_fails() -> None:
    import httpx

    with OpenAIStub(models=["m"]) as stub:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
        r = httpx.post(f"{stub.base_url}/chat/completions", json=body)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hi there"
        stub.fail_next(429, retry_after=0.5)
        r = httpx.post(f"{stub.base_url}/chat/completions", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "0.5"
        with httpx.stream("POST", f"{stub.base_url}/chat/completions", json={**body, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        text = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content", "") for x in lines[:-1])
        assert text == "echo: hi there"
        assert len(stub.requests) == 3
