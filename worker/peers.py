"""No gossip, no mingle: a worker's broker traffic does not grow with the number of its peers.

Celery runs two peer-to-peer steps by default. *Gossip* consumes every event of every other worker
(heartbeats every 2 s and every task event), so each worker receives the whole fleet's event stream: N
workers cost the broker N² deliveries. *Mingle* asks every peer, at start, for its revoked ids and logical
clock, and waits for the replies. No feature of this cluster uses either:

* nothing calls Celery's elections or ``on_node_join`` (gossip's only uses);
* a cancel reaches a worker started after it through the Redis marker that ``JobHandle.cancel`` writes
  (worker/task.py reads it), not through mingle's copy of the revoked ids.

What stays on, because something needs it:

* remote control (the pidbox): ``ping``, the ``revoke`` broadcast that stops a running job, ``inspect
  active`` that ``dance cluster`` asks every node, and Flower's inspect and control pages;
* worker heartbeats (``worker-heartbeat`` events every 2 s): Flower marks a worker online or offline by them;
* task events (``worker_send_task_events``): Flower's task list and its Prometheus series.

Each event is still published once, to whoever subscribes (Flower): a constant cost per worker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init


def without_gossip_and_mingle(app: Celery) -> None:
    """Start ``app``'s workers as ``--without-gossip --without-mingle`` would, however they are started
    (``dance worker``, ``celery -A ... worker``, a supervisor's own command line).

    The two are worker options, not configuration settings. ``worker_init`` fires after the worker has
    kept its options (``WorkController.options``) and before its blueprint hands them to the consumer's
    steps (celery/worker/worker.py ``setup_instance``), so the options set here are the ones Gossip and
    Mingle are built with.
    """

    def quiet(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            sender.options.update(without_gossip=True, without_mingle=True)

    worker_init.connect(quiet, weak=False)
