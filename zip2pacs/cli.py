"""The command line: parse, set up logging and signals, call one function, turn errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

from . import __version__, legacy, logcontext, probe, stowrs
from .association import PeerUnavailable
from .config import Config, ConfigError, load_config
from .contexts import syntax_name
from .daemon import AlreadyRunning, run_forever, run_once, single_instance
from .demo import run_demo
from .ledger import Ledger
from .peer import Peer
from .probe import SHORT_SYNTAX_NAMES
from .progress import LogProgress, TerminalProgress
from .report import status_text
from .retry import move_back, plan_retry
from .stowrs import StowSettings

LOGGER = logging.getLogger("zip2pacs")

EXIT_OK, EXIT_UNDELIVERED, EXIT_CONFIG = 0, 1, 2
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom_zip_watcher.py",
        description="Watch a folder for ZIP exports of DICOM studies and store every instance on a PACS by C-STORE.",
        epilog="Exit codes: 0 ok, 1 some ZIP not delivered (or the peer check failed), 2 configuration error.",
    )
    parser.add_argument("config", type=Path, nargs="?", help="the YAML configuration file (see config.yaml)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--demo", action="store_true", help="deliver generated studies to an embedded PACS, no config needed"
    )
    mode.add_argument("--once", action="store_true", help="deliver the ZIPs present now, then exit")
    mode.add_argument("--check", action="store_true", help="validate the configuration and C-ECHO the peer")
    mode.add_argument("--status", action="store_true", help="summarise the ledger: ZIPs by state, pending, failures")
    mode.add_argument(
        "--retry-failed",
        nargs="*",
        metavar="NAME",
        help="move ZIPs from failed_dir back to the watch folder: all but those whose failure cannot change, or NAMEs",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def setup_logging(config: Config | None, level: str = "INFO") -> None:
    """Log to the console and, given a config, to its log file: ``time | LEVEL | message``.

    Library records are named after the ZIP and entry being handled, those the watcher handles itself
    become DEBUG lines, and Python warnings go to the log (see logcontext).
    """
    level = config.log_level if config else level
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            RotatingFileHandler(
                config.log_file, maxBytes=config.log_max_bytes, backupCount=config.log_backup_count, encoding="utf-8"
            )
        )
    # pynetdicom narrates every PDU at INFO; keep its warnings only unless debugging or asked for its lines.
    debug = level == "DEBUG" or (config is not None and config.log_pynetdicom_debug)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(logcontext.LibraryFilter(debug))
        root.addHandler(handler)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.WARNING)
    logcontext.capture_warnings()


def python_command() -> str:
    """Return how to run this Python from the current folder: ``.venv/bin/python`` when it is there, else python3."""
    try:
        return str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        return "python3"


def demo() -> int:
    """Run the pipeline on generated studies against an embedded Storage SCP and say what arrived."""
    setup_logging(None)
    delivered, received, config = run_demo()
    print(f"Demo: {len(received.uids)} instances of {len(received.studies)} studies stored by the embedded SCP")
    print(f"      (AE title {config.peer.ae_title} on 127.0.0.1:{config.peer.port}); every ZIP archived: {delivered}.")
    python = python_command()
    print(f"Next: edit config.yaml for your PACS, then run: {python} dicom_zip_watcher.py config.yaml --check")
    return EXIT_OK if delivered and received.uids else EXIT_UNDELIVERED


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the loop to stop after the instance under way; SIGHUP reopens the log file."""

    def handler(signum: int, _frame: object) -> None:
        LOGGER.info("Received %s; stopping", signal.Signals(signum).name)
        stop.set()

    def reopen_logs(_signum: int, _frame: object) -> None:
        # logrotate moved the file away: close ours so the next line opens a new one.
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler):
                h.close()
        LOGGER.info("Received SIGHUP; log file reopened")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reopen_logs)


def create_folders(config: Config) -> list[str]:
    """Create the configured folders (and those of the ledger and log file); return a problem for each that fails."""
    wanted = {
        "paths.watch_dir": config.watch_dir,
        "paths.work_dir": config.work_dir,
        "paths.archive_dir": config.archive_dir,
        "paths.failed_dir": config.failed_dir,
        "paths.state_db": config.state_db.parent,
        "logging.file": config.log_file.parent,
    }
    problems = []
    for key, folder in wanted.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"At '{key}': cannot create the folder {folder} ({exc.strerror or exc})")
    return problems


def check(config: Config) -> int:
    """Print the configuration summary, then one block per destination: what its probe proved, and what not."""
    print(f"Configuration {config.source}: OK")
    print(f"Watch folder {config.watch_dir}; ledger {config.state_db}")
    if len(config.destinations) == 1 and config.destinations[0].peer is not None:
        return check_dimse(config.destinations[0].peer)
    code = EXIT_OK
    for d in config.destinations:
        print(
            f"\nDestination {d.name} ({d.kind}, {d.key})"
            + (f", SOP classes {', '.join(sorted(d.sop_classes))}" if d.sop_classes else "")
        )
        if d.peer is not None:
            result = check_dimse(d.peer)
        else:
            assert d.stow is not None
            result = check_stowrs(d.stow)
        code = max(code, result)
    return code


def check_stowrs(settings: StowSettings) -> int:
    """Print what a QIDO-RS query proved about a STOW-RS destination, and what it could not."""
    try:
        result = stowrs.check(settings)
    except stowrs.DestinationUnavailable as exc:
        print(f"Check failed: {exc}")
        return EXIT_UNDELIVERED
    print(f"GET {result.url}: HTTP {result.status} in {result.seconds * 1000:.1f} ms")
    print(f"Proven: {result.proven}")
    print(f"Not verified: {result.unproven}")
    if not result.ok:  # no refusal, no QIDO-RS either (a 501, say): only a real STOW-RS request will tell
        print("Check inconclusive: the server did not refuse us, but did not answer as a DICOMweb service.")
    return EXIT_OK


def check_dimse(peer: Peer) -> int:
    """Print what one probing association learnt from a DIMSE peer: echo, SOP classes, syntaxes."""
    secure = "DICOM TLS" if peer.tls is not None else "plain TCP (no TLS)"
    print(f"Peer {peer.ae_title} at {peer.host}:{peer.port} over {secure}, calling AE title {peer.local_ae_title}")
    # pynetdicom logs a failed connection (a TLS one with a traceback); the one line below says it all.
    quiet = logging.getLogger("pynetdicom")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        result = probe.probe(peer)
    except PeerUnavailable as exc:
        print(f"Association failed: {exc}")
        return EXIT_UNDELIVERED
    finally:
        quiet.setLevel(level)
    implementation = f" (implementation {result.implementation})" if result.implementation else ""
    milliseconds = result.association_seconds * 1000
    print(
        f"Association accepted by {peer.ae_title} at {peer.host}:{peer.port} in {milliseconds:.1f} ms{implementation}"
    )
    if result.echo.ok:
        print(f"C-ECHO OK: round trip {result.echo.seconds * 1000:.1f} ms ({result.echo.detail})")
    else:
        print(f"C-ECHO failed: {result.echo.detail}")
    accepted = [c for c in result.classes if c.accepted]
    print(f"Storage SOP classes accepted: {len(accepted)} of {len(result.classes)} proposed")
    width = max(len(syntax_name(c.sop_class)) for c in result.classes)
    for support in result.classes:
        syntaxes = ", ".join(SHORT_SYNTAX_NAMES.get(ts, syntax_name(ts)) for ts in support.accepted) or "REFUSED"
        print(f"  {syntax_name(support.sop_class):<{width}}  {syntaxes}")
    print(
        f"Not verified: that the peer lets AE title {peer.local_ae_title} store "
        "(Orthanc: DicomAlwaysAllowStore / DicomModalities); only a real C-STORE proves it."
    )
    print(
        "Note: a successful echo does not prove the peer will store from this AE title "
        f"({peer.local_ae_title}); Orthanc, for one, answers C-ECHO from anyone but stores only as configured."
    )
    if not result.echo.ok or not accepted:
        if not accepted:
            print("Check failed: the peer accepts none of the common storage SOP classes.")
        return EXIT_UNDELIVERED
    return EXIT_OK


def status(config: Config) -> int:
    """Print the ledger summary; a ledger that does not exist yet is not created."""
    if not config.state_db.exists():
        print(f"Ledger {config.state_db}: none yet (no watcher has run with {config.source})")
        return EXIT_OK
    if legacy.awaiting_import(config.state_db):  # opening it would add the ledger's tables before its backup
        print(f"Ledger {config.state_db}: the original script's state file; the first start backs it up and imports it")
        return EXIT_OK
    with Ledger(config.state_db) as ledger:
        print(status_text(ledger, config))
    return EXIT_OK


def retry(config: Config, names: list[str]) -> int:
    """Move failed ZIPs back to the watch folder (all that may succeed now, or those named); say what stays."""
    try:
        plan = plan_retry(config, names)
    except FileNotFoundError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_UNDELIVERED
    code = EXIT_OK
    moved = []
    for item in plan.move:
        try:
            moved.append((item, move_back(config, item)))
        except OSError as exc:
            print(f"Error: cannot move {item.path} back: {exc.strerror or exc}", file=sys.stderr)
            code = EXIT_UNDELIVERED
    print(f"Moved {len(moved)} ZIP(s) from {config.failed_dir} back to {config.watch_dir}")
    for item, target in moved:
        renamed = f" (was {item.path.name})" if target.name != item.path.name else ""
        print(f"  {target.name}{renamed}")
    if plan.keep:
        print(f"Left in {config.failed_dir}: they failed for a reason that cannot change (name one to move it anyway):")
        print("\n".join(f"  {item.path.name}: {item.reason}" for item in plan.keep))
    return code


def run(config: Config, once: bool) -> int:
    """Deliver (once, or until stopped) under the ledger's lock, taken before the log file is opened."""
    problems = create_folders(config)
    if problems:
        print(f"Error: cannot create the folders configured in {config.source}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with single_instance(config, lend=True):
            return _deliver(config, once)
    except AlreadyRunning as exc:  # before the log file is opened: the running watcher's log stays its own
        print(f"Error: {exc}; stop it first, or use another paths.state_db", file=sys.stderr)
        return EXIT_UNDELIVERED


def _deliver(config: Config, once: bool) -> int:
    setup_logging(config)
    stop = threading.Event()
    install_signal_handlers(stop)
    peer = config.peer
    if len(config.destinations) > 1 or config.destinations[0].peer is None:
        where = ", ".join(f"{d.name} ({d.key})" for d in config.destinations)
        LOGGER.info("DICOM ZIP Watcher %s: %s -> %s", __version__, config.watch_dir, where)
    else:
        LOGGER.info(
            "DICOM ZIP Watcher %s: %s -> %s@%s:%d", __version__, config.watch_dir, peer.ae_title, peer.host, peer.port
        )
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else LogProgress()
    if once:
        return EXIT_OK if run_once(config, stop, progress) else EXIT_UNDELIVERED
    run_forever(config, stop, progress)
    LOGGER.info("Stopped")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        return demo()
    if args.config is None:
        parser.error("the configuration file is required (or use --demo)")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"Error: invalid configuration in {exc.path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    # Only the modes that deliver create folders: --check and --status look, and change nothing.
    if args.check:
        return check(config)
    if args.status:
        return status(config)
    if args.retry_failed is not None:
        return retry(config, args.retry_failed)
    return run(config, once=args.once)
