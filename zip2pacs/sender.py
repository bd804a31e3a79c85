"""The only module that opens sockets: C-ECHO and batched C-STORE with pynetdicom."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .sniff import Instance


class PeerUnavailable(Exception):
    """No association could be made (refused, timed out, rejected); delivery is delayed, not failed."""


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

    @property
    def key(self) -> str:
        """Stable identity of the peer in the ledger."""
        return f"{self.ae_title}@{self.host}:{self.port}"


class Outcome(enum.Enum):
    STORED = "stored"  # 0x0000
    WARNING = "warning"  # stored with a warning status
    TRANSIENT = "transient"  # try again later (no response, abort, 0xA7xx)
    PERMANENT = "permanent"  # the peer refuses this instance for good


@dataclass(frozen=True)
class StoreResult:
    instance: Instance
    outcome: Outcome
    status: int | None  # the C-STORE status, None when no response came
    detail: str  # human-readable: status in words, error comment, refusal reason


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    seconds: float
    detail: str


def echo(peer: Peer) -> EchoResult:
    """C-ECHO the peer (TO BE WRITTEN)."""
    raise NotImplementedError


def store(
    peer: Peer,
    instances: Sequence[Instance],
    on_result: Callable[[StoreResult], None] | None = None,
) -> list[StoreResult]:
    """C-STORE the instances over one association (TO BE WRITTEN)."""
    raise NotImplementedError
