"""The README's tables stay true to the code: every error code and every environment variable."""

from __future__ import annotations

import re
from pathlib import Path

from producer.errors import CATALOG

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_error_code_is_documented_with_its_branch() -> None:
    for code, info in CATALOG.items():
        branch = "retryable" if info.branch.retryable else "permanent"
        assert re.search(rf"^\| `{re.escape(code)}` \| {branch} \|", README, re.MULTILINE), code


def test_every_environment_variable_the_code_reads_is_in_the_configuration_table() -> None:
    sources = [p.read_text() for folder in ("producer", "worker") for p in (ROOT / folder).rglob("*.py")]
    names = {name for text in sources for name in re.findall(r'"((?:CELERY|COMFYUI|DANCE)_[A-Z_]+)"', text)}
    assert names, "the settings modules read no variables?"
    for name in sorted(names):
        assert f"| `{name}` |" in README, name


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_into_the_celery_on_redis_notes_names_one_of_their_sections() -> None:
    notes = (ROOT / "docs" / "celery-on-redis.md").read_text()
    anchors = {_anchor(line[3:]) for line in notes.splitlines() if line.startswith("## ")}
    tracked = [p for folder in ("producer", "worker", "tests", "docker") for p in (ROOT / folder).rglob("*")
               if p.suffix in {".py", ".md", ".yaml", ".sh"}]
    tracked += [ROOT / "README.md", ROOT / "RELIABILITY.md", ROOT / "compose.yaml"]
    links = {(path.name, anchor) for path in tracked
             for anchor in re.findall(r"celery-on-redis\.md#([\w-]+)", path.read_text())}
    assert links, "nothing links to the notes?"
    assert sorted(link for link in links if link[1] not in anchors) == []
