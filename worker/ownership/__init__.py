"""Ownership of in-flight jobs, independent of Celery's event loop.

* registry.py: every run this worker holds, keyed by run (delivery, lease token, prompt, cancel flag, phase);
* heartbeat.py: a thread that renews leases and keeps held messages fresh, through drains and reconnects;
* leases.py: execution leases whose token fences every write of a job's result;
* cancels.py: the cancel flag a run polls;
* kombu_compat.py: the one module that knows kombu's ``unacked`` bookkeeping;
* predecessor.py: the prompt a dead run left running, stopped before another run takes its job over.
"""
