"""Fixtures for the DRA plugin tests."""

from tests.kube.kube_support import apiserver, token_file

__all__ = ["apiserver", "token_file"]
