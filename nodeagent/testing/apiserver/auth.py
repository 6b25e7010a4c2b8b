"""Authentication (kube-apiserver's static token file, re-read when it changes) and the per-user rate limit
(a token bucket: 429 with ``Retry-After``). Authorization (RBAC and the node authorizer) is ``k8s_rbac``."""

from __future__ import annotations

import csv
from pathlib import Path

from nodeagent.testing.k8s_rbac import User


class TokenFile:
    """kube-apiserver's static token file, re-read when its modification time or size changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def lookup(self, token: str) -> User | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            self._users = parse_token_file(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = (st.st_mtime_ns, st.st_size)
        return self._users.get(token)


def parse_token_file(text: str, source: str = "token file") -> dict[str, User]:
    users: dict[str, User] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 3:
            raise ValueError(f'{source}:{lineno}: expected token,user,uid[,"group1,group2"]')
        groups = tuple(g for g in (row[3].split(",") if len(row) > 3 else []) if g)
        users[row[0]] = User(row[1], (*groups, "system:authenticated"))
    return users


class RateLimiter:
    """A token bucket per user: ``qps`` refill, ``burst`` capacity (the API server's 429 + Retry-After)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, user: str, now: float) -> float:
        """0 when admitted, else seconds until a token is available."""
        if self.qps <= 0:
            return 0.0
        tokens, last = self._buckets.get(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.qps)
        if tokens >= 1:
            self._buckets[user] = (tokens - 1, now)
            return 0.0
        self._buckets[user] = (tokens, now)
        return (1 - tokens) / self.qps
