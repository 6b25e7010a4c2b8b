"""Fixtures for the labels tests: the server under test (stand-in and real, tests/kube/servers.py)."""

from tests.kube.kube_support import token_file
from tests.kube.servers import apiserver, server_kind, standin

__all__ = ["apiserver", "server_kind", "standin", "token_file"]
