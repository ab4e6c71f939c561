"""The documentation site's shape: every page in the nav, each opening with a runnable example, no dead page."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
AREAS = {"data", "encoders", "policies", "evaluation", "experiments", "judge", "simulator", "serving",
         "litellm", "deployment"}  # fmt: skip


def _nav() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material" and config["strict"] is True
    return [next(iter(entry.values())) for entry in config["nav"]]


def test_every_page_is_in_the_nav_and_every_area_has_a_page() -> None:
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(_nav()) == pages
    assert {p.removesuffix(".md") for p in pages} >= AREAS


def test_each_area_page_opens_with_a_runnable_example() -> None:
    for area in sorted(AREAS):
        text = (ROOT / "docs" / f"{area}.md").read_text()
        blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
        assert blocks[0].startswith("# "), area
        assert blocks[1].startswith("```bash") or blocks[1].startswith("```python"), (area, blocks[1][:80])


def test_readme_and_docs_links_name_existing_pages_and_images() -> None:
    for source in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        base = source.parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", source.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (base / target).is_file(), f"{source.name}: dead link {target}"
