"""The process helpers the tests share with the harness (harness/processes.py)."""

from harness.processes import (
    DEFAULT_START_TIMEOUT_S,
    ManagedProcess,
    free_port,
    port_accepts,
    running,
    wait_until,
)

__all__ = ["DEFAULT_START_TIMEOUT_S", "ManagedProcess", "free_port", "port_accepts", "running", "wait_until"]
