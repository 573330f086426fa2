"""Where the stack keeps its downloads and its state: outside the work tree, read at call time."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Downloads (jars, the OpenSearch distribution, Maven's repository) live here."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eventstore"
    return Path(os.environ.get("EVENTSTORE_CACHE_DIR", default))


def state_dir() -> Path:
    """Configuration, data, logs and pid files of the running stack live here.

    Outside the work tree, so every checkout on this machine shares one stack on the
    standard ports instead of fighting over them.
    """
    default = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return Path(os.environ.get("EVENTSTORE_STACK_DIR", default / "eventstore" / "stack"))
