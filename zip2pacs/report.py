"""`--status`: a readable summary of the ledger."""

from __future__ import annotations

import time
from datetime import datetime

from .config import Config
from .ledger import Ledger, Pause
from .pause import ends_when


def _when(ts: float | None) -> str:
    if ts is None:
        return "at the next start"
    left = ts - time.time()
    stamp = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} (in {left:.0f} s)" if left > 0 else f"{stamp} (due now)"


def status_text(ledger: Ledger, config: Config) -> str:
    """Return the ledger summary that ``--status`` prints."""
    states = ledger.zips_overall()
    several = len(config.destinations) > 1 or config.destinations[0].peer is None
    names = {d.key: d.name for d in config.destinations}
    where = ", ".join(f"{d.name} ({d.key})" for d in config.destinations)
    lines = [
        f"Ledger {config.state_db}",
        f"Destinations {where}" if several else f"Peer {config.peer.key}",
        "ZIPs: " + _counts(states),
        *(_per_destination(ledger, config) if several else []),
        f"Instances delivered: {ledger.instance_count()}",
    ]
    paused = {pause.peer: pause for pause in ledger.pauses()}
    lines += _paused(config, paused)
    pending = ledger.pending()
    if pending and several:
        pending = sorted(pending, key=lambda p: names.get(p[1], p[1]))  # grouped by destination, oldest first
    if pending:
        lines.append("Pending:")
        for name, key, attempts, next_retry, error in pending:
            peer = f"{names[key]} ({key})" if several and key in names else key
            # The ledger outlives files an operator moved away by hand: say so rather than promise a retry.
            when = (
                f"next {_when(next_retry)}" if (config.watch_dir / name).exists() else "no longer in the watch folder"
            )
            if key in paused and (config.watch_dir / name).exists():  # the refusal is above, under Paused
                lines.append(f"  {name} -> {peer}: {attempts} attempt(s), waits while {names.get(key, key)} is paused")
                continue
            lines.append(f"  {name} -> {peer}: {attempts} attempt(s), {when}; last error: {error or '-'}")
    failures = ledger.recent_failures_by_peer()
    if failures:
        lines.append("Recent failures:")
        for name, peer, updated, error, final_path in failures:
            stamp = datetime.fromtimestamp(updated).strftime("%Y-%m-%d %H:%M:%S")
            by = f" -> {names.get(peer, peer)}" if several else ""
            lines.append(f"  {stamp} {name}{by}: {error} ({final_path})")
    return "\n".join(lines)


def _counts(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none yet"


def _per_destination(ledger: Ledger, config: Config) -> list[str]:
    """Return a line per destination counting its ZIPs by state; receivers no longer configured follow."""
    by_peer = ledger.zips_by_peer()
    lines = [f"  {d.name} ({d.key}): {_counts(by_peer.pop(d.key, {}))}" for d in config.destinations]
    return lines + [f"  {key} (not configured now): {_counts(states)}" for key, states in sorted(by_peer.items())]


def _paused(config: Config, paused: dict[str, Pause]) -> list[str]:
    """Return the lines that say which destinations are paused for their credentials, since when and until what."""
    lines = ["Paused for their credentials (nothing is sent to them):"] if paused else []
    for d in config.destinations:
        pause = paused.get(d.key)
        if pause is None:
            continue
        since = datetime.fromtimestamp(pause.began).strftime("%Y-%m-%d %H:%M:%S")
        minutes = (time.time() - pause.began) / 60
        sooner = f"; sooner when {ends_when(d.stow)}" if d.stow is not None else ""
        lines.append(f"  {d.name} ({d.key}) since {since} ({minutes:.0f} min): {pause.reason}")
        lines.append(f"    one request tries again {_when(pause.probe_at)}{sooner}")
    return lines
