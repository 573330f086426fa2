"""Small helpers shared by tests."""

from __future__ import annotations

import uuid


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
