"""Media inputs: fetch a job's image and video references into checked local files.

``fetch_input`` downloads (http(s) behind an SSRF guard, or the worker's own storage), sniffs, checks
the kind and decodes; ``sniff_media`` tells what a file is from its first bytes and is shared with the
producer.
"""

from __future__ import annotations

from worker.inputs.fetch import FetchedInput, fetch_input
from worker.inputs.sniff import MediaKind, MediaType, sniff_media

__all__ = ["FetchedInput", "MediaKind", "MediaType", "fetch_input", "sniff_media"]
