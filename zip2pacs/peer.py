"""The peer as configured: where it is, what it is called, how long to wait for it (no pynetdicom needed)."""

from __future__ import annotations

from dataclasses import dataclass

from .contexts import Decompress
from .tls import TlsSettings


@dataclass(frozen=True)
class Peer:
    host: str = "127.0.0.1"
    port: int = 4242
    ae_title: str = "ORTHANC"
    local_ae_title: str = "ZIPWATCHER"
    local_port: int = 0
    max_pdu: int = 0  # 0: no limit asked
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    decompress: Decompress = Decompress.LOSSLESS  # which compressed files may go decoded
    tls: TlsSettings | None = None  # None: plain TCP

    @property
    def key(self) -> str:
        """Stable identity of the peer in the ledger."""
        return f"{self.ae_title}@{self.host}:{self.port}"
