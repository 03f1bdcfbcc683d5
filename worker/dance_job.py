"""The dance job, the cluster's typed first-class job: a DanceRequest bound into the bundled SCAIL template.

Only its own steps live here (parse the request, fetch the two media, bind the template, record the dance
result); the claim, the prompt, the fence, the manifest and the cleanup are worker/job.py's shared path.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.redact import redact_url
from producer.schema import DanceRequest, parse_request
from worker.claim import raise_if_cancelled
from worker.inputs import fetch_input
from worker.job import JobContext, upload_input
from worker.outputs import store_outputs
from worker.prompt_run import PromptOutcome
from worker.runtime import Runtime


@dataclass(frozen=True)
class DanceJob:
    request: DanceRequest

    @classmethod
    def parse(cls, raw_request: object) -> DanceJob:
        return cls(parse_request(raw_request))  # never trust the producer's validation

    def prepare(self, runtime: Runtime, ctx: JobContext, job_dir: Path) -> dict[str, Any]:
        image, video = self._fetch_inputs(runtime, ctx, job_dir)
        return self.bind(runtime, ctx, image, video)

    def bind(self, runtime: Runtime, ctx: JobContext, image: str, video: str) -> dict[str, Any]:
        """The SCAIL template bound to this request and to the names ComfyUI took the two inputs under."""
        return runtime.workflow.bind({
            "reference_image_filename": image,
            "dance_video_filename": video,
            "prompt": self.request.prompt,
            "negative_prompt": self.request.negative_prompt,
            "width": self.request.width,
            "height": self.request.height,
            "steps": self.request.steps,
            "cfg": self.request.cfg,
            "seed": self.request.resolved_seed(ctx.job_id),
            "output_prefix": f"{runtime.janitor.output_subfolder(ctx.job_id, ctx.run_token)}/dance",
            "job_id": ctx.job_id,
        })

    def _fetch_inputs(self, runtime: Runtime, ctx: JobContext, job_dir: Path) -> tuple[str, str]:
        ctx.progress.stage_changed("downloading")
        began = time.monotonic()
        settings = runtime.settings.fetch
        image = fetch_input(self.request.reference_image, job_dir, "image", settings, runtime.storage)
        raise_if_cancelled(runtime, ctx)
        # The checked image goes up to ComfyUI while the video downloads: the two wait on different hosts.
        # Leaving the block waits for the upload, so no thread outlives this step; a video that fails is the
        # job's error, as it was when both inputs were fetched before either went up (the janitor removes an
        # image this run uploaded, under its run-scoped name).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="input-upload") as uploader:
            image_upload = uploader.submit(upload_input, runtime, ctx, image.path, "reference")
            video = fetch_input(self.request.dance_video, job_dir, "video", settings, runtime.storage)
            ctx.timings.download_s = time.monotonic() - began
        raise_if_cancelled(runtime, ctx)  # a cancel outranks an upload's error, as it did before the uploads
        image_name = image_upload.result()
        ctx.progress.stage_changed("uploading_inputs")
        return image_name, upload_input(runtime, ctx, video.path, "video")

    def store(self, runtime: Runtime, ctx: JobContext, outcome: PromptOutcome, job_dir: Path) -> dict[str, Any]:
        request = self.request
        seed = request.resolved_seed(ctx.job_id)
        stored = store_outputs(runtime.http, runtime.storage, ctx.job_id, outcome.outputs)
        params = {**request.to_payload(), "seed": seed, "notes": list(request.notes)}
        # Media URLs may carry signed-URL tokens or credentials; results and manifests never do.
        params["reference_image"] = redact_url(request.reference_image)
        params["dance_video"] = redact_url(request.dance_video)
        return {"outputs": stored, "seed": seed, "params": params}
