"""Compose the real Hydra configs and instantiate every option of every group."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import router_rl.configs
from router_rl.training import make_policy

CONFIG_ROOT = Path(router_rl.configs.__file__).parent
GROUPS = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir() and not p.name.startswith("__"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / group).glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_every_group_has_options() -> None:
    assert set(GROUPS) >= {"data", "policy", "env", "reward", "judge", "experiment", "debug"}
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_compose_every_option(group: str, option: str) -> None:
    if (group, option) == ("experiment", "sweep_ray"):
        pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs the ray extra")
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "custom"):
        overrides += ["data.outcomes=o.csv", "data.prompts=p.csv", "data.models=m.csv"]
    cfg = compose_train(overrides)
    assert cfg.seed == 0
    if group == "policy":
        policy = make_policy(cfg.policy, ["a", "b"], 4)  # experiment keys (label, warm_start) stay out
        probs = policy.probs([[0.0, 0.1, 0.2, 0.3]], cost_weight=0.1)
        assert probs.shape == (1, 2)


def test_debug_shrinks_the_run_and_defaults_are_documented() -> None:
    default, debug = compose_train([]), compose_train(["debug=default"])
    assert debug.train.steps < default.train.steps
    assert debug.data.max_prompts and not default.data.max_prompts
    assert default.data.bundled == "arena" and default.policy._target_.endswith("LinUCB")
    text = (CONFIG_ROOT / "train.yaml").read_text()
    for line in text.splitlines():  # every default and hyperparameter line carries a comment
        stripped = line.strip()
        if stripped.startswith("- ") and ":" in stripped and "@" not in stripped:
            assert "#" in stripped, line


def test_experiment_overrides_only_what_differs() -> None:
    cfg = compose_train(["experiment=routellm_linucb"])
    assert cfg.data.bundled == "routellm"
    assert cfg.policy._target_.endswith("LinUCB")


def test_warm_start_replay_is_read_and_checked() -> None:
    cfg = compose_train([])
    assert make_policy(cfg.policy, ["a", "b"], 4).warm_start_spec["replay"] is False  # the default's
    old = compose_train(["policy=lowrank_warm"])
    assert make_policy(old.policy, ["a", "b"], 4).warm_start_spec["replay"] is True  # unset: replayed
    bad = compose_train(["policy.warm_start.replay=sometimes"])
    with pytest.raises(ValueError, match=r"warm_start\.replay must be true or false"):
        make_policy(bad.policy, ["a", "b"], 4)


def test_the_static_encoders_fit_reaches_distill(monkeypatch: pytest.MonkeyPatch) -> None:
    import router_rl.static_encoder as se
    from router_rl.training import make_embedder

    seen: dict = {}

    class Called(Exception):
        pass

    def fake(model: str, **kwargs: object) -> None:
        seen.update(kwargs)
        raise Called

    monkeypatch.setattr(se, "distill", fake)
    default = {**se.FIT_DEFAULTS, "crops": 2}  # the fit with two crops per prompt is on by default
    for overrides, fit in (
        ([], default),
        (["embedder.distill.fit={epochs: 2}"], {**default, "epochs": 2}),  # merged into the default
        (["embedder.distill.fit.crops=0"], {**default, "crops": 0}),
        (["embedder.distill.fit=null"], None),
    ):
        cfg = compose_train(["embedder=static", *overrides])
        with pytest.raises(Called):
            make_embedder(cfg.embedder, show_progress=False)
        assert seen["fit"] == fit and seen["dim"] == 256
    # every fit setting can be overridden, and the default is the crops fit the docs measure, by its id
    assert se.distill_settings(256, 1e-5, None, default) == se.distill_settings(
        256, 1e-5, None, {"corpus": "routellm", "crops": 2}
    )
