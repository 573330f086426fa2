"""Imports point one way: the domain imports nothing of ours above it, the public formats
(eventstore.wire) know nothing of gRPC or the servicer, and nothing outside the gRPC layer
reaches into it for a format."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        path = ROOT / part
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(imported(path))
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
    ]


def test_the_sources_are_found() -> None:
    assert len(sources("eventstore/wire")) >= 3
    assert "eventstore.wire.events" in imported(ROOT / "eventstore/client.py")


@pytest.mark.parametrize(
    ("parts", "forbidden"),
    [
        (
            ("eventstore/domain",),
            (
                *(
                    f"eventstore.{name}"
                    for name in ("api", "wire", "v1", "storage", "publishing", "search", "usecases")
                ),
                # The W3C trace context is plain data there (domain/tracecontext.py).
                "opentelemetry",
                "eventstore.tracing",
            ),
        ),
        (("eventstore/wire",), ("grpc", "grpc_status", "eventstore.api", "eventstore.publishing")),
        (
            (
                "eventstore/client.py",
                "eventstore/publishing",
                "eventstore/config.py",
                "indexer",
                "replayer",
            ),
            ("eventstore.api",),
        ),
    ],
)
def test_imports_point_one_way(parts: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    assert offending(sources(*parts), forbidden) == []
