"""The prompt a dead run left running, stopped before another run takes its job over.

A worker killed mid-job (SIGKILL, OOM, a kill after a SIGTERM) leaves its prompt running when its ComfyUI
lives on in a container of its own. Its restarted process clears it (worker/orphans.py), but only once that
process is back, connected to the broker and past its gate, which may be long after the job's lease expired
and another worker took the job: the chaos run caught the same job on two GPUs at once this way. So every
run records where its prompt runs (``dance:job:<id>:prompt``: ComfyUI URL, prompt id, lease token), and a run
that acquires a job's lease first stops a prompt recorded by an earlier run, on that run's ComfyUI, and
waits until it has left that ComfyUI's queue (worker/prompt_stop.py never touches another prompt).

A ComfyUI that does not answer is taken as gone, and its prompt with it. A record whose ComfyUI is this
worker's own loopback address cannot be reached from another host; the worker that left it clears it.
"""

from __future__ import annotations

import json
import logging
import threading

import redis

from producer import keys
from producer.errors import DanceError
from worker.comfy_http import ComfyHttp
from worker.prompt_stop import stop_prompt

log = logging.getLogger(__name__)

#: Timeout of the calls made to the dead run's ComfyUI, in seconds: it may well be gone.
PREDECESSOR_TIMEOUT_S = 5.0
#: Delete the record only if it is still this run's.
_FORGET = """
local raw = redis.call('get', KEYS[1])
if raw and cjson.decode(raw)['token'] == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def record_prompt(client: redis.Redis, job_id: str, token: str, comfyui_url: str, prompt_id: str) -> None:
    record = {"token": token, "comfyui_url": comfyui_url, "prompt_id": prompt_id}
    client.set(keys.job_prompt(job_id), json.dumps(record), ex=keys.JOB_KEY_TTL_S)


def forget_prompt(client: redis.Redis, job_id: str, token: str) -> None:
    client.eval(_FORGET, 1, keys.job_prompt(job_id), token)


def stop_predecessor(client: redis.Redis, job_id: str, token: str, give_up: threading.Event) -> None:
    """Stop the prompt an earlier run of ``job_id`` recorded, if any, and return only once it is out of its
    ComfyUI's queue, that ComfyUI is gone, or ``give_up`` is set (a cancel or a shutdown of this run); never
    raises for ComfyUI's sake.

    It keeps trying for as long as the prompt runs: an interrupt lands only at the next sampler step or node
    (15_interrupt_non_progress_node), and one step of a large video model can take longer than any fixed
    wait. Running the job meanwhile would put it on two GPUs at once (the chaos run caught one whose dead
    run's prompt was still in a 12 s step when a 10 s wait gave up). The lease stays this run's meanwhile:
    the heartbeat renews it.
    """
    raw = client.get(keys.job_prompt(job_id))
    if raw is None:
        return
    record = json.loads(raw)
    if record.get("token") == token:
        return
    http = ComfyHttp(str(record["comfyui_url"]), PREDECESSOR_TIMEOUT_S)
    try:
        while _answers(http, job_id, str(record["comfyui_url"])):
            if stop_prompt(http, str(record["prompt_id"])):
                log.warning("job %s: taking over from a run that did not finish; its prompt %s on %s is out of "
                            "its queue now", job_id, record["prompt_id"], record["comfyui_url"])
                return
            log.warning("job %s: the prompt %s of the run it takes over from still runs on %s; waiting for it to "
                        "stop before this run starts, so that the job never runs on two GPUs", job_id,
                        record["prompt_id"], record["comfyui_url"])
            if give_up.is_set():
                return
    finally:
        http.close()


def _answers(http: ComfyHttp, job_id: str, comfyui_url: str) -> bool:
    """Whether the dead run's ComfyUI answers; one that does not is taken as gone, its prompt with it."""
    try:
        http.learn_version(http.system_stats(timeout_s=PREDECESSOR_TIMEOUT_S))
    except DanceError as exc:
        log.info("job %s: the ComfyUI of its earlier run (%s) does not answer (%s); its prompt is gone with it",
                 job_id, comfyui_url, exc.code)
        return False
    return True
