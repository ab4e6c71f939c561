"""Progress that fits where it runs: a bar in a terminal, a few lines in a log."""

from __future__ import annotations

import io

import pytest

from router_rl.progress import LogProgress, mode, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_progress_prints_the_start_every_quarter_and_nothing_else() -> None:
    out = io.StringIO()
    with LogProgress(1000, "train", "step", stream=out) as bar:
        for _ in range(100):
            bar.update(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in out.getvalue()
    assert lines[0] == "[router-rl] train: 1000 steps to go"
    assert [line.split(":", 1)[1].split(",")[0].strip() for line in lines[1:]] == [
        "250/1000 steps (25%)", "500/1000 steps (50%)", "750/1000 steps (75%)", "1000/1000 steps (100%)"
    ]  # fmt: skip


def test_log_progress_says_where_it_stopped() -> None:
    out = io.StringIO()
    bar = LogProgress(100, "eval", "step", stream=out)
    bar.update(30)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("[router-rl] eval: stopped at 30/100 steps")
    assert len(out.getvalue().splitlines()) == 3  # start, 25%, stopped


def test_mode_follows_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_RL_PROGRESS", raising=False)
    assert mode(_Terminal()) == "bar" and mode(io.StringIO()) == "log"
    monkeypatch.setenv("ROUTER_RL_PROGRESS", "off")
    assert mode(_Terminal()) == "off"
    monkeypatch.setenv("ROUTER_RL_PROGRESS", "loud")
    with pytest.raises(ValueError, match="ROUTER_RL_PROGRESS must be one of"):
        mode()


def test_progress_is_a_tqdm_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_RL_PROGRESS", "bar")
    from tqdm.auto import tqdm

    with progress(10, "train", "step", file=io.StringIO()) as bar:
        assert isinstance(bar, tqdm)
    monkeypatch.setenv("ROUTER_RL_PROGRESS", "log")
    assert isinstance(progress(10, "train", "step"), LogProgress)


def test_a_logged_training_run_has_a_few_progress_lines_and_no_bar(debug_run: dict) -> None:
    err = debug_run["stderr"]
    assert "\r" not in err and "step/s]" not in err and "Batches" not in err and "Loading weights" not in err
    lines = [line for line in err.splitlines() if line.startswith("[router-rl] train: ")]
    assert 2 <= len(lines) <= 6 and lines[-1].startswith("[router-rl] train: ") and "(100%)" in lines[-1]
