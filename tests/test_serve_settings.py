"""Settings from defaults, ROUTER_RL_SERVE_* variables and flags; API keys; the upstreams file."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_rl.serve.cli import _parser, settings_from
from router_rl.serve.settings import ServeSettings, SettingsError, from_env, parse_api_keys
from router_rl.serve.upstreams import UpstreamConfigError, load_upstreams_file, upstream_map


def test_defaults_bind_loopback() -> None:
    s = ServeSettings().validate()
    assert s.host == "127.0.0.1" and s.port == 8080 and s.api_keys == {} and s.admin_token is None


def test_environment_then_flags(tmp_path: Path) -> None:
    env = {
        "ROUTER_RL_SERVE_PORT": "9001",
        "ROUTER_RL_SERVE_BATCH_MAX_WAIT_MS": "5.5",
        "ROUTER_RL_SERVE_LOG_PROMPTS": "true",
        "ROUTER_RL_SERVE_LOG_DB": "",
        "ROUTER_RL_SERVE_API_KEYS": "team-a:sk-a, team-b:sk-b",
        "ROUTER_RL_SERVE_UPSTREAM": "http://127.0.0.1:4000/v1",
    }
    s = from_env(env)
    assert (s.port, s.batch_max_wait_ms, s.log_prompts, s.log_db) == (9001, 5.5, True, None)
    assert s.api_keys == {"team-a": "sk-a", "team-b": "sk-b"} and s.upstream == "http://127.0.0.1:4000/v1"
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nteam-c:sk-c\n")
    opts = _parser().parse_args(
        [
            "art",
            "--port",
            "9002",
            "--no-log-prompts",
            "--api-key",
            "team-d:sk-d",
            "--api-keys-file",
            str(keys),
        ]
    )
    s = settings_from(opts, env)
    assert s.port == 9002 and s.log_prompts is False and s.batch_max_wait_ms == 5.5  # flags win, env stays
    assert s.api_keys == {"team-a": "sk-a", "team-b": "sk-b", "team-c": "sk-c", "team-d": "sk-d"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROUTER_RL_SERVE_PORT": "eighty"}, "expected an integer"),
        ({"ROUTER_RL_SERVE_LOG_PROMPTS": "maybe"}, "expected true or false"),
        ({"ROUTER_RL_SERVE_API_KEYS": "name:"}, "not name:token"),
        ({"ROUTER_RL_SERVE_API_KEYS": "a:x,a:y"}, "appears twice"),
    ],
)
def test_bad_environment_values_are_named(env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as err:
        from_env(env)
    assert next(iter(env)) in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "port"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"explore_epsilon": 1.5}, "explore_epsilon"),
        ({"upstream": "127.0.0.1:4000"}, "http:// or https://"),
        ({"device": "tpu"}, "device"),
        ({"upstream_timeout_s": 0}, "upstream_timeout_s"),
    ],
)
def test_bad_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServeSettings(**changes).validate()


def test_a_bare_token_gets_a_stable_name() -> None:
    (name,) = parse_api_keys("sk-secret", "x")
    assert name.startswith("key-") and parse_api_keys("sk-secret", "x")[name] == "sk-secret"
    assert "secret" not in name


def test_upstreams_file(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text(
        "default:\n  base_url: http://127.0.0.1:4000/v1\n  api_key_env: GATEWAY_KEY\n"
        "models:\n  big:\n    base_url: https://api.example.test/v1\n    model: big-2024\n"
        "    api_key_env: BIG_KEY\n    headers: {X-Team: research}\n"
    )
    mapping = load_upstreams_file(path, {"GATEWAY_KEY": "sk-g", "BIG_KEY": "sk-b"})
    big, small = mapping.get("big"), mapping.get("small")
    assert (big.base_url, big.model, big.api_key) == ("https://api.example.test/v1", "big-2024", "sk-b")
    assert big.request_headers() == {
        "Content-Type": "application/json",
        "X-Team": "research",
        "Authorization": "Bearer sk-b",
    }
    assert (small.base_url, small.model, small.api_key) == ("http://127.0.0.1:4000/v1", "small", "sk-g")
    assert big.chat_url == "https://api.example.test/v1/chat/completions"
    only = upstream_map("http://127.0.0.1:1/v1", None, environ={"ROUTER_RL_UPSTREAM_API_KEY": "k"})
    assert only.get("anything").model == "anything" and only.get("anything").api_key == "k"
    assert not upstream_map(None, None) and upstream_map(None, None).get("x") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [1, 2]", "models must map"),
        ("models:\n  big: {base_url: ftp://x}", "models.big.base_url"),
        ("models:\n  big: {base_url: 'http://x', api_kee_env: K}", "unknown key"),
        ("default: 3", "default: expected a mapping"),
        ("other: {}", "expected a mapping with 'models'"),
        ("models: {big: {base_url: 'http://x'}}\n  bad indent: [", "not valid YAML"),
    ],
)
def test_bad_upstreams_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text(text)
    with pytest.raises(UpstreamConfigError, match=message) as err:
        load_upstreams_file(path, {})
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("argv", "env", "where"),
    [
        (["--budget-usd-per-hour", "-1"], {}, "[--budget-usd-per-hour]"),
        (["--registry-poll-s", "-5"], {}, "[--registry-poll-s]"),
        (["--judge-pairwise-share", "0.5"], {}, "[--judge-reference-model]"),
        ([], {"ROUTER_RL_SERVE_BUDGET_STEP": "0"}, "[ROUTER_RL_SERVE_BUDGET_STEP]"),
    ],
)
def test_bad_values_name_their_flag_or_variable(argv: list[str], env: dict, where: str) -> None:
    opts = _parser().parse_args(["artifact", *argv])
    with pytest.raises(SettingsError) as info:
        settings_from(opts, env)
    message = str(info.value)
    assert message.endswith(where) and "\n" not in message
