"""``router-rl train --help``: the composed config with each key's documentation, read from the YAML comments.

Hydra's own ``--help`` prints ``$CONFIG`` without comments, so the one-line doc next to every default (in
``configs/train.yaml`` and the group files) would be lost. This renders the config that the given overrides
compose (``router-rl train policy=knn --help`` shows kNN's options), each leaf as ``key: value  # comment``,
with the comment taken from the file that set the key: the chosen option of its group first, then the other
options of that group (inherited defaults), then the primary config (``train.yaml``, ``eval.yaml``).
"""

from __future__ import annotations

import re
import textwrap
from importlib.resources import files
from typing import Any

KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<item>-\s+)?(?P<key>[A-Za-z_][\w.@/-]*)\s*:(?P<rest>.*)$")
COMMENT_COLUMN = 44


def split_comment(text: str) -> tuple[str, str]:
    """``"value  # doc"`` -> ``("value", "doc")``: the first ``#`` outside quotes that follows a space."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def yaml_comments(text: str, prefix: str = "") -> dict[str, str]:
    """Dotted key -> trailing comment of every ``key: value  # comment`` line of one YAML file.

    Entries of a ``defaults`` list (``- policy: linucb  # the learner``) are keyed ``defaults.<group>``.
    A file marked ``# @package _global_`` is read at the root whatever ``prefix`` is."""
    if "# @package _global_" in text:
        prefix = ""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match["indent"]) + (len(match["item"]) if match["item"] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"]
        if match["item"] and stack and stack[-1][1] == "defaults":
            key = key.removeprefix("override ").strip("/")
        path = ".".join([p for _, p in stack] + [key])
        _, comment = split_comment(match["rest"])
        if comment:
            out[prefix + path] = comment
        stack.append((indent, key))
    return out


def _read(path: Any) -> str:
    return path.read_text() if path.is_file() else ""


def comment_index(config_name: str, choices: dict[str, str]) -> dict[str, str]:
    """Every documented key of the config ``config_name`` composed with the group ``choices``."""
    root = files("router_rl.configs")
    index: dict[str, str] = {}
    primaries = ["train.yaml", "eval.yaml"] if config_name == "eval" else [f"{config_name}.yaml"]
    for name in primaries:  # eval.yaml's own comments win over train.yaml's (its parent)
        index.update(yaml_comments(_read(root.joinpath(name))))
    for group, option in choices.items():
        if group.startswith("hydra") or option is None:
            continue
        folder = root.joinpath(group)
        if not folder.is_dir():
            continue
        siblings = sorted(
            p for p in folder.iterdir() if p.name.endswith(".yaml") and p.name != f"{option}.yaml"
        )
        for path in [*siblings, folder.joinpath(f"{option}.yaml")]:  # the chosen option's comments win
            index.update(yaml_comments(_read(path), prefix=f"{group}."))
    return index


def group_options(group: str) -> list[str]:
    folder = files("router_rl.configs").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _scalar(value: Any) -> str:
    import yaml

    if isinstance(value, str) and "${" in value:
        return value  # an interpolation, shown as written
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _line(text: str, comment: str) -> str:
    if not comment:
        return text
    return (
        f"{text.ljust(COMMENT_COLUMN - 1)} # {comment}"
        if len(text) < COMMENT_COLUMN - 1
        else f"{text}  # {comment}"
    )


def render_config(
    config: dict[str, Any], comments: dict[str, str], prefix: str = "", depth: int = 0
) -> list[str]:
    """``key: value  # comment`` lines of ``config`` (nested dicts indented, lists and scalars inline)."""
    lines: list[str] = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        head = "  " * depth + f"{key}:"
        if isinstance(value, dict) and value:
            lines.append(_line(head, comments.get(path, "")))
            lines.extend(render_config(value, comments, f"{path}.", depth + 1))
        else:
            lines.append(_line(f"{head} {_scalar(value)}", comments.get(path, "")))
    return lines


def render_help(config_name: str, overrides: list[str]) -> str:
    """The help text of ``router-rl <config_name> [overrides] --help``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="router_rl.configs", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    header, footer = cfg.hydra.help.header, cfg.hydra.help.footer
    comments = comment_index(config_name, choices)
    body = OmegaConf.to_container(cfg, resolve=False)
    body.pop("hydra", None)
    listed = [
        k.removeprefix("defaults.") for k in comments if k.startswith("defaults.")
    ]  # train.yaml's order
    groups = sorted(
        (g for g in choices if not g.startswith("hydra") and group_options(g)),
        key=lambda g: (listed.index(g) if g in listed else len(listed), g),
    )
    width = max(len(f"{g}={choices[g]}") for g in groups) + 2
    group_lines = []
    for group in groups:
        chosen = f"{group}={'null' if choices[group] is None else choices[group]}"
        group_lines.append(f"{chosen.ljust(width)}{comments.get(f'defaults.{group}', '')}".rstrip())
        options = textwrap.wrap(
            f"options: {', '.join(group_options(group))}",
            width=110,
            initial_indent=" " * width,
            subsequent_indent=" " * (width + 9),
        )
        group_lines.extend(options)
    return "\n".join(
        [
            header,
            "",
            "== Config groups (choose one with group=option; the chosen option shown) ==",
            *group_lines,
            "",
            "== Config (override any value with key=value; each key's documentation after #) ==",
            *render_config(body, comments),
            "",
            footer,
        ]
    )
