"""The `destinations:` list of config.yaml: where each instance goes (DIMSE C-STORE or DICOMweb STOW-RS), validated."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import resolve_path
from .peer import Peer
from .sniff import Instance
from .stowrs import StowSettings

KINDS = ("dimse", "stowrs")
NAME = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_NAME = "pacs"  # the one destination the `dicom:` section means when there is no `destinations:`
MAX_REQUESTS = 4  # STOW-RS requests in flight at once, by default: below the 6 a browser opens to one host

Check = Callable[[Any], str | None]  # returns what was expected, or None when fine


@dataclass(frozen=True)
class Destination:
    """One receiver: its name (for people), its ledger key, and how to reach it."""

    name: str
    kind: str  # dimse | stowrs
    key: str  # identity in the ledger: AE@host:port, or stowrs:<url>
    peer: Peer | None = None  # dimse
    stow: StowSettings | None = None  # stowrs
    max_associations: int = 8  # dimse: associations at most; stowrs: requests in flight at most (max_requests)
    sop_classes: frozenset[str] = frozenset()  # empty: every SOP class

    def takes(self, instance: Instance) -> bool:
        """Return True when this destination's filter lets the instance through."""
        return not self.sop_classes or instance.sop_class_uid in self.sop_classes


def dimse(name: str, peer: Peer, max_associations: int, sop_classes: frozenset[str] = frozenset()) -> Destination:
    """Return a DIMSE destination; its ledger key is the peer's (AE@host:port), as it always was."""
    return Destination(name, "dimse", peer.key, peer=peer, max_associations=max_associations, sop_classes=sop_classes)


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a string"


def _optional_path(v: Any) -> str | None:
    return None if isinstance(v, str) else "a file path ('' = none)"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _int(lo: int, hi: int) -> Check:
    return lambda v: (
        None if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else f"an integer {lo}-{hi}"
    )


def _number(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    return None if ok else "a number greater than 0"


def _uids(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(u, str) and re.fullmatch(r"[0-9.]{1,64}", u) for u in v)
    return None if ok else "a list of SOP Class UIDs"


COMMON: dict[str, Check] = {"name": _str, "kind": _str, "sop_classes": _uids}
DIMSE_KEYS: dict[str, Check] = {
    "peer_host": _str,
    "peer_port": _int(1, 65535),
    "peer_ae_title": _str,
    "max_associations": _int(1, 16),
}
STOW_KEYS: dict[str, Check] = {
    "url": _str,
    "ca_file": _optional_path,
    "verify": _bool,
    "cert_file": _optional_path,
    "key_file": _optional_path,
    "username": _str,
    "password": _str,
    "token_file": _optional_path,
    "token_env": _str,
    "max_instances": _int(1, 100_000),
    "max_mb": _int(1, 2**20),
    "max_requests": _int(1, 16),
    "timeout": _number,
}
REQUIRED = {"dimse": ("peer_host", "peer_port", "peer_ae_title"), "stowrs": ("url",)}


def parse_destinations(
    raw: Any, base: Path, template: Peer, max_associations: int, host_check: Check, ae_check: Check
) -> tuple[tuple[Destination, ...], list[str]]:
    """Return the destinations of a `destinations:` list and every problem found, as `At 'destinations[i].key'`.

    A dimse item takes everything but host, port and AE title from ``template`` (the `dicom:`/`tls:` sections).
    """
    if not isinstance(raw, list) or not raw:
        return (), [f"At 'destinations': expected a list of destinations, got {raw!r}"]
    found: list[Destination] = []
    problems: list[str] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"destinations[{index}]"
        if not isinstance(item, dict):
            problems.append(f"At '{where}': expected a mapping with name, kind and its settings, got {item!r}")
            continue
        destination, wrong = _one(item, where, base, template, max_associations, host_check, ae_check)
        problems.extend(wrong)
        if destination is None:
            continue
        if destination.name in names:
            problems.append(f"At '{where}.name': expected a name no other destination has, got {destination.name!r}")
        names.add(destination.name)
        found.append(destination)
    keys = [d.key for d in found]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        problems.append(f"At 'destinations': expected each receiver once, got {key} more than once")
    return tuple(found), problems


def _one(
    item: dict[str, Any],
    where: str,
    base: Path,
    template: Peer,
    max_associations: int,
    host_check: Check,
    ae_check: Check,
) -> tuple[Destination | None, list[str]]:
    kind = item.get("kind")
    if kind not in KINDS:
        return None, [f"At '{where}.kind': expected one of {', '.join(KINDS)}, got {kind!r}"]
    table = {**COMMON, **(DIMSE_KEYS if kind == "dimse" else STOW_KEYS)}
    problems = [
        f"At '{where}.{k}': unknown key for a {kind} destination (expected one of {', '.join(sorted(table))})"
        for k in item
        if k not in table
    ]
    for k in ("name", *REQUIRED[kind]):
        if item.get(k) is None:
            problems.append(f"At '{where}.{k}': expected a value, got nothing")
    for k, check in table.items():
        if item.get(k) is None or k not in item:
            continue
        expected = check(item[k])
        if expected is None and k == "peer_host":
            expected = host_check(item[k])
        if expected is None and k == "peer_ae_title":
            expected = ae_check(item[k])
        if expected is None and k == "name" and not NAME.fullmatch(item[k]):
            expected = "a name of letters, digits, _ and -"
        if expected:
            problems.append(f"At '{where}.{k}': expected {expected}, got {item[k]!r}")
    if problems:
        return None, problems
    name, uids = item["name"], frozenset(item.get("sop_classes") or ())
    if kind == "dimse":
        peer = dataclasses.replace(
            template, host=item["peer_host"].strip(), port=item["peer_port"], ae_title=item["peer_ae_title"].strip()
        )
        return dimse(name, peer, item.get("max_associations", max_associations), uids), []
    try:
        stow = _stow(item, name, base)
    except ValueError as exc:
        return None, [f"At '{where}': expected consistent STOW-RS settings, got {str(exc).split(': ', 1)[-1]}"]
    in_flight = item.get("max_requests", MAX_REQUESTS)
    key = "stowrs:" + stow.base_url
    return Destination(name, kind, key, stow=stow, max_associations=in_flight, sop_classes=uids), []


def _stow(item: dict[str, Any], name: str, base: Path) -> StowSettings:
    def path(k: str) -> Path | None:
        return resolve_path(item[k], base) if item.get(k) else None

    settings: dict[str, Any] = {
        k: item[k] for k in ("verify", "username", "password", "token_env", "max_instances") if k in item
    }
    if "max_mb" in item:
        settings["max_bytes"] = item["max_mb"] * 1024 * 1024
    if "timeout" in item:
        settings["timeout"] = float(item["timeout"])
    return StowSettings(
        base_url=item["url"].strip(),
        name=name,
        ca_file=path("ca_file"),
        cert_file=path("cert_file"),
        key_file=path("key_file"),
        token_file=path("token_file"),
        **settings,
    )
