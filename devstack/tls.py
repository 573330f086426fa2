"""The stack's TLS material: a local CA and one server certificate, made once with openssl."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devstack.certificates import make_ca, make_cert, openssl
from devstack.locations import state_dir

#: Protects only the local stack's throw-away keystore (the JVMs require one).
KEYSTORE_PASSWORD = "eventstore-dev"  # noqa: S105 - a local, throw-away keystore


@dataclass(frozen=True)
class Pki:
    """A local CA and one server certificate (127.0.0.1, localhost) for the stack's TLS."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def keystore(self) -> Path:
        """PKCS#12: the server key and certificate, for Cassandra and Kafka."""
        return self.root / "server.p12"


def pki() -> Pki:
    """Made once with openssl, kept in the state directory (valid ten years; local only)."""
    found = Pki(state_dir() / "pki")
    if found.keystore.exists():
        return found
    root = found.root
    root.mkdir(parents=True, exist_ok=True)
    make_ca("ca", root, days=3650)
    make_cert("server", "ca", root, san="IP:127.0.0.1,DNS:localhost", days=3650)
    openssl(
        root,
        *("pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-certfile"),
        *("ca.crt", "-name", "server", "-out", "server.p12.tmp"),
        *("-password", f"pass:{KEYSTORE_PASSWORD}"),
    )
    (root / "server.p12.tmp").rename(found.keystore)
    return found
