"""What each scenario times: (corpus, receiver, sender) cells, which repeat every round and which may be capped."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from clients import DcmtkStorescu, PynetdicomStorescu, RunningWatcher, Watcher
from corpora import Corpus
from receivers import RECEIVERS, Receiver, TunedOrthanc
from report import DCMTK, DCMTK_NODELAY
from targets import STOCK, TUNED
from wan import DelayedReceiver, label

Client = Watcher | DcmtkStorescu | PynetdicomStorescu
NODELAY = {"TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Planned:
    corpus: Corpus
    receiver: str  # its name in the results
    client: Client
    every_round: bool  # False: measured in the first round only (context, not a target's figure)
    make_receiver: Callable[[Path], Receiver]
    nagle_bound: bool  # a baseline that waits on a delayed ACK per instance: steady, may be stopped at the cap
    rerun: bool = False  # also time a re-run of the same ZIP (every instance a duplicate) after this run


def _nagle_bound(receiver: str, client: Client) -> bool:
    # dcmtk without TCP_NODELAY (the stock Orthanc, the default-environment storescu) waits on a delayed ACK
    # for every instance: such a run is steady and may be stopped early; every other run goes to its end.
    return not isinstance(client, Watcher) and (receiver == STOCK or client.name == DCMTK)


def _cell(corpus: Corpus, receiver: str, client: Client, every_round: bool) -> Planned:
    rerun = isinstance(client, Watcher) and receiver == TUNED and client.max_associations == 1
    return Planned(corpus, receiver, client, every_round, RECEIVERS[receiver], _nagle_bound(receiver, client), rerun)


def _loopback_feeds_a_target(receiver: str, client: Client) -> bool:
    if receiver == STOCK:
        return isinstance(client, Watcher) or client.name == DCMTK
    if receiver == TUNED:
        return not (isinstance(client, Watcher) and client.max_associations == 4)
    return False


def loopback(sets: list[Corpus]) -> list[Planned]:
    """Return today's full plan: every receiver, the watcher at 1, 2, 4 associations, dcmtk and pynetdicom."""
    senders: list[Client] = [
        Watcher(1),
        Watcher(2),
        Watcher(4),
        DcmtkStorescu(),
        DcmtkStorescu(NODELAY),
        PynetdicomStorescu(),
    ]
    return [
        _cell(corpus, receiver, client, _loopback_feeds_a_target(receiver, client))
        for corpus in sets
        for receiver in RECEIVERS
        for client in senders
    ]


def realistic(sets: list[Corpus]) -> list[Planned]:
    """Return the realistic corpora on loopback: stock and tuned Orthanc, the watcher's default config first."""
    senders: list[Client] = [
        Watcher(None),
        Watcher(1),
        Watcher(2),
        Watcher(4),
        DcmtkStorescu(),
        DcmtkStorescu(NODELAY),
    ]
    plan = []
    for corpus in sets:
        for receiver in (STOCK, TUNED):
            for client in senders:
                target = client.name in ("watcher default", "watcher ma=2") or (
                    receiver == TUNED and client.name == DCMTK_NODELAY
                )
                plan.append(replace(_cell(corpus, receiver, client, target), rerun=False))
    return plan


def wan(sets: list[Corpus], rtts_ms: list[int], rate_mbit: float | None) -> list[Planned]:
    """Return the WAN plan: the tuned Orthanc behind a delay line at each RTT; default config and storescu repeat."""
    senders: list[Client] = [
        Watcher(None),
        RunningWatcher(),
        Watcher(1),
        Watcher(2),
        Watcher(4),
        DcmtkStorescu(NODELAY),
    ]
    plan = []
    for corpus in sets:
        for rtt in rtts_ms:
            make = functools.partial(DelayedReceiver, TunedOrthanc, rtt, rate_mbit)
            name = label(TunedOrthanc.name, rtt)
            for client in senders:
                every = client.name in ("watcher default", "watcher running", DCMTK_NODELAY)
                plan.append(Planned(corpus, name, client, every, make, nagle_bound=False))
    return plan
