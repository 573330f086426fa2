"""The permission file (YAML): read at start, re-read when its content changes or on SIGHUP,
so keys can be rotated and grants changed without a restart.

A file that fails to parse on reload is logged and ignored: the server keeps the last good
policy rather than locking everyone out (or letting everyone in).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import structlog
import yaml

from eventstore import metrics
from eventstore.domain.access import AccessPolicy, PolicyError, parse_policy

log = structlog.get_logger(__name__)


def parse_file(content: bytes, path: Path) -> AccessPolicy:
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_policy(document)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


class PolicyFile:
    def __init__(self, path: Path, content: bytes, policy: AccessPolicy) -> None:
        self.path = path
        self._digest = hashlib.sha256(content).digest()
        self._policy = policy

    @classmethod
    def load(cls, path: Path) -> PolicyFile:
        """Read at start-up; a missing or wrong file stops the server (PolicyError)."""
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
        return cls(path, content, parse_file(content, path))

    def current(self) -> AccessPolicy:
        return self._policy

    async def reload(self) -> bool:
        """Re-read the file; True if the policy changed. Reading is cheap (a small file), and
        comparing content works whatever the file system's timestamps (and for Kubernetes,
        which swaps a symlink)."""
        try:
            content = await asyncio.to_thread(self.path.read_bytes)
            digest = hashlib.sha256(content).digest()
            if digest == self._digest:
                return False
            policy = parse_file(content, self.path)
        except (OSError, PolicyError) as exc:
            metrics.POLICY_RELOADS.labels("failed").inc()
            log.error("permission file not reloaded; keeping the previous one", error=str(exc))
            return False
        self._digest, self._policy = digest, policy
        metrics.POLICY_RELOADS.labels("applied").inc()
        log.info(
            "permission file reloaded",
            path=str(self.path),
            principals=len(policy.principals),
            keys=len(policy.keys),
        )
        return True

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.reload()
