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
