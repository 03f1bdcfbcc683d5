"""Readers for the deployment files, as Docker would read them: compose interpolation and Dockerfile lines.

Nothing here builds or runs a container; the tests assert the invariants these readers expose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
COMPOSE_WORKER = ROOT / "compose.worker.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CUSTOM_NODES = ROOT / "docker" / "custom-nodes.txt"
ENV_EXAMPLE = ROOT / "docker" / "env.example"
ENV_WORKER_EXAMPLE = ROOT / "docker" / "env.worker.example"

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?")
HEX40 = re.compile(r"[0-9a-f]{40}")


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` and ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        current = env.get(name)
        if operator in {":?", "?"} and (current is None or (operator == ":?" and current == "")):
            raise LookupError(f"{name}: {argument}")
        if operator == ":-" and not current:
            return argument
        if operator == "-" and current is None:
            return argument
        return current or ""

    return _VARIABLE.sub(substitute, value)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file with YAML anchors merged and variables interpolated from ``env`` (default: none set)."""
    raw = yaml.safe_load(path.read_text())
    return dict(_interpolate_tree(raw, env or {}))


def raw_compose(path: Path) -> dict[str, Any]:
    """Anchors merged, variables left as written."""
    return dict(yaml.safe_load(path.read_text()))


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def duration_s(text: str) -> float:
    match = _DURATION.fullmatch(str(text))
    if match is None or not any(match.groups()):
        raise ValueError(f"not a compose duration: {text!r}")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def worker_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose["services"].items() if name.startswith("worker-")}


def gpu_workers(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in worker_services(compose).items() if "deploy" in spec}


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    arguments: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction with continuation lines joined, tagged with the stage (``AS`` name) it belongs to."""
    instructions: list[Instruction] = []
    stage, pending = "", ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += " " + stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        if keyword.upper() == "FROM":
            stage = arguments.split(" AS ")[-1].strip() if " AS " in arguments else arguments.strip()
        instructions.append(Instruction(stage, keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stage(name: str) -> list[Instruction]:
    return [item for item in dockerfile_instructions() if item.stage == name]


def env_of_stage(name: str) -> dict[str, str]:
    """ENV values of one stage (``KEY=value`` pairs; values here never contain spaces)."""
    values: dict[str, str] = {}
    for item in stage(name):
        if item.keyword == "ENV":
            for pair in item.arguments.split():
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def build_args() -> dict[str, str]:
    values = {}
    for item in dockerfile_instructions():
        if item.keyword == "ARG" and "=" in item.arguments:
            key, _, value = item.arguments.partition("=")
            values[key] = value
    return values
