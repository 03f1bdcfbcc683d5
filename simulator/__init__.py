"""A stand-in for ComfyUI 0.3.39 that CI can run without a GPU.

It answers HTTP and WebSocket exactly as the transcripts in shared/comfyui-protocol record a real server
answering, and it runs the dance workflow's nodes for real enough to write a playable MP4. With
``--version 0.12.3`` (``COMFYSIM_VERSION``) it also does what the worker relies on in the GPU image's
ComfyUI (shared/comfyui-protocol-0.12.3): /system_stats reports 0.12.3, ``POST /interrupt {"prompt_id": X}``
stops only a running X, and GET /api/jobs answers. Other 0.12.3 differences (``progress_state`` frames,
throttled progress) are not modelled.

Modules, from the outside in:

- ``__main__``: the command line (``python -m simulator`` / ``dance-comfysim``), start delay, bind.
- ``settings``: the frozen settings dataclass built from argv and ``COMFYSIM_*`` variables.
- ``server``: ComfyUI's routes (and their /api aliases) plus the /__sim__ test hooks.
- ``files``: POST /upload/image and GET /view.
- ``messages``: WebSocket sessions and frame delivery (targeted, broadcast, binary previews).
- ``prompt_queue``: the heap-ordered queue and the in-memory history.
- ``validation``: POST /prompt validation with ComfyUI's error types.
- ``worker`` / ``execution`` / ``node_call``: the executor thread, one prompt, one node.
- ``graph`` / ``cache``: execution order and the signature cache.
- ``catalog`` / ``paths`` / ``stats``: /object_info, folders and file naming, /system_stats.
- ``jobs``: GET /api/jobs and /api/jobs/{id} (0.12.3 only).
- ``faults``: armed faults and the state GET /__sim__/state reports, with one run record per prompt run.
- ``nodes``: node implementations, by pack.
"""
