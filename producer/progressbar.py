"""A one-line live progress display for ``dance submit --wait`` (plain lines when not on a terminal)."""

from __future__ import annotations

from typing import Any, TextIO

#: Width of the bar, in characters.
BAR_CHARS = 30


def describe_progress(progress: dict[str, Any] | None) -> str:
    """One line for humans: ``executing node 348 (WanVideoSamplerv2): 3/6 (50.0%)``.

    The worker puts the same text into Flower's ``result`` field, the only one Flower shows.
    """
    if not progress:
        return ""
    text = str(progress.get("stage", ""))
    if progress.get("node"):
        text += f" node {progress['node']}"
        if progress.get("class_type"):
            text += f" ({progress['class_type']})"
    if progress.get("max"):
        text += f": {progress['value']}/{progress['max']} ({progress.get('percent', 0.0)}%)"
    return text


class ProgressLine:
    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last_text = ""

    def update(self, state: str, info: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        percent = float(info.get("percent") or 0.0) if info else 0.0
        filled = int(BAR_CHARS * percent / 100)
        label = describe_progress(info) if state == "PROGRESS" else state.lower()
        if state == "REQUEUED" and info:
            label = f"requeued after {info.get('code')} (attempt {info.get('attempt')})"
        text = f"[{'#' * filled}{'.' * (BAR_CHARS - filled)}] {percent:5.1f}% {label}"
        if text == self._last_text:
            return
        self._last_text = text
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._last_text:
            self.stream.write("\n")
            self.stream.flush()
