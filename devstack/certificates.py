"""Certificates made with openssl: the local stack's TLS, and the tests' CAs and clients."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=120)


def make_ca(name: str, directory: Path, days: int = 2) -> Path:
    """A self-signed CA: <name>.crt and <name>.key in `directory`."""
    openssl(
        directory,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days)),
        *("-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt"),
    )
    return directory / f"{name}.crt"


def make_cert(name: str, ca: str, directory: Path, san: str | None = None, days: int = 2) -> Path:
    """A certificate with subject CN=<name> signed by the CA `ca` (made by make_ca)."""
    openssl(
        directory,
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
    )
    extra: list[str] = []
    if san:
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl(
        directory,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-days", str(days), "-out", f"{name}.crt", *extra),
    )
    return directory / f"{name}.crt"
