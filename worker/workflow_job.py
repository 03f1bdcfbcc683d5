"""The workflow job: an arbitrary API-format graph, submitted through the gateway, run on the shared path.

Only its own steps live here; the claim, the prompt, the fence, the manifest and the cleanup are
worker/job.py's, exactly as for the dance job. Its own steps:

* parse: the graph's shape (producer/graph.py) and its ``core/ASSET`` references, checked again here,
  never trusting the producer's checks;
* prepare: every referenced asset is loaded for the job's owner (``asset.missing`` otherwise), its blob
  fetched from storage into the job's folder and uploaded to this worker's ComfyUI under a run-scoped name
  (worker/cleanup.py), whose name then takes the reference's place in the node's input. Every
  ``filename_prefix`` is moved into the run's output subfolder, so concurrent jobs never collide there and
  the janitor removes the run's outputs as it does a dance job's;
* store: every file the prompt saved becomes an asset of the job's owner (producer/assets.py, with the
  job's id), and the result lists them.
"""

from __future__ import annotations

import copy
import mimetypes
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from producer import assets
from producer.errors import WORKFLOW_INVALID, error
from producer.graph import check_graph
from worker.claim import raise_if_cancelled
from worker.comfy_http import OutputFile
from worker.job import JobContext, upload_input
from worker.prompt_run import PromptOutcome
from worker.runtime import Runtime

#: The input that names where a saving node writes (SaveImage, SaveVideo, SaveAnimatedWEBP, VHS_VideoCombine).
PREFIX_INPUT = "filename_prefix"
#: A file suffix kept on an uploaded asset's name (ComfyUI's loaders pick files by extension).
SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,12}")
#: Content type of an output whose name says nothing of its kind.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Bytes copied per step while an output streams from ComfyUI's /view to the job's folder.
COPY_CHUNK_BYTES = 1 << 20
#: Output kinds of the v2 contract, by the first part of the content type.
CONTENT_KINDS = frozenset({"image", "video", "audio", "text"})


@dataclass(frozen=True)
class WorkflowJob:
    graph: dict[str, Any]
    #: The API key name the job runs for: it may use only its own assets, and owns its outputs.
    owner: str

    @classmethod
    def parse(cls, workflow: object, owner: object) -> WorkflowJob:
        graph = check_graph(workflow)
        if not isinstance(owner, str):
            raise error(WORKFLOW_INVALID, "the job's owner must be a string", owner=type(owner).__name__)
        assets.refs_in(graph)  # malformed references fail the job before it claims anything
        return cls(copy.deepcopy(graph), owner)

    def prepare(self, runtime: Runtime, ctx: JobContext, job_dir: Path) -> dict[str, Any]:
        graph = copy.deepcopy(self.graph)
        ctx.progress.stage_changed("downloading")
        began = time.monotonic()
        records = assets.check_refs(runtime.redis, graph, owner=self.owner)
        fetched: dict[str, Path] = {}
        for index, (asset_id, record) in enumerate(records.items()):
            raise_if_cancelled(runtime, ctx)
            fetched[asset_id] = _fetch_blob(runtime, record, job_dir / f"asset{index}{_suffix_of(record)}")
            assets.touch(runtime.redis, record)  # in use: it outlives the job that reads it
        ctx.timings.download_s = time.monotonic() - began
        raise_if_cancelled(runtime, ctx)
        ctx.progress.stage_changed("uploading_inputs")
        names = {asset_id: upload_input(runtime, ctx, path, path.stem) for asset_id, path in fetched.items()}
        for node_id, input_name, asset_id in assets.refs_in(graph):
            graph[node_id]["inputs"][input_name] = names[asset_id]
        scope_outputs(graph, runtime.janitor.output_subfolder(ctx.job_id, ctx.run_token))
        return graph

    def store(self, runtime: Runtime, ctx: JobContext, outcome: PromptOutcome, job_dir: Path) -> dict[str, Any]:
        outputs = [self._store_output(runtime, ctx, item, job_dir / f"output{index}")
                   for index, item in enumerate(outcome.outputs)]
        return {"kind": "workflow", "outputs": outputs}

    def _store_output(self, runtime: Runtime, ctx: JobContext, item: OutputFile, path: Path) -> dict[str, Any]:
        content_type = mimetypes.guess_type(item.filename)[0] or DEFAULT_CONTENT_TYPE
        with runtime.http.view(item) as body, path.open("wb") as out:
            shutil.copyfileobj(body, out, COPY_CHUNK_BYTES)  # streamed: a video output is never held whole
        try:
            record, _created = assets.store_file(runtime.redis, runtime.storage, path, content_type=content_type,
                                                 file_path=item.filename, owner=self.owner, job_id=ctx.job_id)
        finally:
            path.unlink(missing_ok=True)
        return {
            "node_id": item.node_id,
            "name": item.filename,
            "type": output_type(item.filename, content_type),
            "content_type": content_type,
            "size_bytes": record.size_bytes,
            "asset_id": record.id,
            "hash": record.hash,
        }


def _fetch_blob(runtime: Runtime, record: assets.AssetRecord, dest: Path) -> Path:
    runtime.storage.download(runtime.storage.uri_for(record.key), dest, max_bytes=record.size_bytes)
    return dest


def _suffix_of(record: assets.AssetRecord) -> str:
    """The suffix the uploaded copy gets: the asset's own file name's, else one its content type implies."""
    suffix = PurePosixPath(record.file_path or "").suffix
    if SAFE_SUFFIX.fullmatch(suffix):
        return suffix.lower()
    return mimetypes.guess_extension(record.content_type) or ""


def scope_outputs(graph: dict[str, Any], subfolder: str) -> None:
    """Point every literal ``filename_prefix`` into the run's output subfolder, keeping its last part."""
    for node in graph.values():
        inputs = node.get("inputs") or {}
        value = inputs.get(PREFIX_INPUT)
        if isinstance(value, str):
            inputs[PREFIX_INPUT] = f"{subfolder}/{PurePosixPath(value).name or 'output'}"


def output_type(filename: str, content_type: str) -> str:
    """The v2 output kind: image, video, audio, text, latent or file."""
    if PurePosixPath(filename).suffix.lower() == ".latent":
        return "latent"
    major = content_type.split("/", 1)[0]
    if major in CONTENT_KINDS:
        return major
    return "text" if content_type == "application/json" else "file"
