"""Fixtures of the deployment tests: a loopback server for model downloads."""

from tests.docker.range_server import range_server

__all__ = ["range_server"]
