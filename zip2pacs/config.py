"""Load config.yaml: one table of keys (type, default, check, meaning), every problem reported at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from .contexts import Decompress
from .destinations import DEFAULT_NAME, Destination, dimse, parse_destinations
from .paths import layout_problems, resolve_path
from .peer import Peer
from .tls import TlsSettings
from .tls import problems as tls_problems
from .unzip import Limits

DEDUP_POLICIES = ("uid_then_sha256", "uid_only", "sha256_only")
OBSERVERS = ("auto", "native", "polling")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; ``problems`` lists each one."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    kind: str  # path | optional_path ("" = unset) | str | int | float | bool | choice
    default: Any
    meaning: str
    check: Callable[[Any], str | None] | None = None  # returns what was expected, or None when fine
    choices: tuple[str, ...] = ()

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _int_range(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"an integer {lo}-{hi}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "a number greater than 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "a number of seconds >= 0"


def _ae_title(v: str) -> str | None:
    ok = 0 < len(v.strip()) <= 16 and "\\" not in v and v.isascii() and v.isprintable()
    return None if ok else "an AE title of 1-16 printable ASCII characters without backslash"


def _host(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", v) else "a host name or IP address"


MB = 1024 * 1024

# fmt: off
KEYS: tuple[Key, ...] = (
    Key("paths", "watch_dir", "path", "incoming", "Folder watched for ZIP files."),
    Key("paths", "work_dir", "path", "work", "Temporary extraction folders, one per ZIP."),
    Key("paths", "archive_dir", "path", "archive", "ZIPs whose every instance is on the peer."),
    Key("paths", "failed_dir", "path", "failed", "ZIPs that cannot be delivered, each with a reason file."),
    Key("paths", "state_db", "path", "state/uploader.sqlite3", "SQLite ledger of ZIPs and delivered instances."),
    Key("dicom", "peer_host", "str", "127.0.0.1", "PACS host name or IP address.", _host),
    Key("dicom", "peer_port", "int", 4242, "PACS DICOM port.", _int_range(1, 65535)),
    Key("dicom", "peer_ae_title", "str", "ORTHANC", "PACS (called) AE title.", _ae_title),
    Key("dicom", "local_ae_title", "str", "ZIPWATCHER", "Our (calling) AE title.", _ae_title),
    Key("dicom", "local_port", "int", 0, "Local port to bind; 0 = any free port.", _int_range(0, 65535)),
    Key("dicom", "max_pdu", "int", 0, "Largest PDU we accept, in bytes; 0 = no limit.", _int_range(0, 2**32 - 1)),
    Key("dicom", "acse_timeout", "float", 30.0, "Seconds to wait for association set-up/release.", _positive),
    Key("dicom", "dimse_timeout", "float", 60.0, "Seconds to wait for a C-STORE/C-ECHO response.", _positive),
    Key("dicom", "network_timeout", "float", 60.0, "Seconds of network silence before aborting.", _positive),
    Key("dicom", "max_associations", "int", 8, "Most associations sending one ZIP at once: the watcher starts with one and adds one while it raises the rate.", _int_range(1, 16)),
    Key("dicom", "use_tls", "bool", False, "Speak DICOM TLS to the peer (needs tls.ca_file)."),
    Key("tls", "ca_file", "optional_path", "", "PEM certificates of the CAs that signed the peer's certificate."),
    Key("tls", "cert_file", "optional_path", "", "Our client certificate (PEM), for peers that require one."),
    Key("tls", "key_file", "optional_path", "", "Its private key (PEM, unencrypted), when not inside cert_file."),
    Key("tls", "verify_hostname", "bool", True, "The peer's certificate must name dicom.peer_host."),
    Key("behavior", "poll_interval_seconds", "float", 10.0, "Rescan of watch_dir (safety net for lost events).", _positive),
    Key("behavior", "wait_zip_complete_seconds", "float", 5.0, "A ZIP is taken once its size and mtime are unchanged this long.", _non_negative),
    Key("behavior", "unreadable_zip_grace_seconds", "float", 600.0, "A ZIP that does not open as a ZIP is judged corrupt only after it has stayed unchanged this long (a copy may be paused); until then it is pending.", _non_negative),
    Key("behavior", "send_batch_size", "int", 25, "Instances handed to a sender at a time.", _int_range(1, 100_000)),
    Key("behavior", "dedup_policy", "choice", "uid_then_sha256", "How delivered instances are recognised.", choices=DEDUP_POLICIES),
    Key("behavior", "delete_extracted_after_upload", "bool", True, "Remove the extraction folder after a ZIP is done."),
    Key("behavior", "move_zip_to_archive", "bool", True, "false: a delivered ZIP stays in the watch folder, recorded as delivered, and is never sent or re-extracted again."),
    Key("behavior", "retry_base_seconds", "float", 30.0, "First retry delay after a transient failure; doubles each time.", _positive),
    Key("behavior", "retry_max_seconds", "float", 1800.0, "Longest delay between retries.", _positive),
    Key("behavior", "give_up_after_hours", "float", 24.0, "A ZIP still undelivered this long after first seen moves to failed_dir.", _positive),
    Key("behavior", "observer", "choice", "auto", "How to see new files: native (inotify), polling, or auto (polling on WSL /mnt drives and network shares).", choices=OBSERVERS),
    Key("behavior", "decompress", "choice", "lossless", "Compressed files the peer refuses that may go decoded: never, lossless, lossy.", choices=tuple(Decompress)),
    Key("limits", "max_total_mb", "int", 50 * 1024, "Largest total uncompressed size of one ZIP, in MB.", _int_range(1, 2**40)),
    Key("limits", "max_entries", "int", 200_000, "Most entries in one ZIP.", _int_range(1, 2**31)),
    Key("limits", "max_compression_ratio", "int", 1000, "Largest uncompressed/compressed ratio of one entry.", _int_range(2, 2**31)),
    Key("limits", "min_free_disk_mb", "int", 1024, "Free space kept in work_dir's filesystem, in MB.", _int_range(0, 2**40)),
    Key("limits", "nested_zip_depth", "int", 1, "How deep ZIPs inside the ZIP are extracted too (0 = not).", _int_range(0, 5)),
    Key("logging", "level", "choice", "INFO", "Log level of the log file and console.", choices=LOG_LEVELS),
    Key("logging", "file", "path", "logs/uploader.log", "Log file."),
    Key("logging", "max_bytes", "int", 10 * MB, "Size at which the log file is rotated; 0 = never.", _int_range(0, 2**40)),
    Key("logging", "backup_count", "int", 5, "Rotated log files kept (uploader.log.1 ...).", _int_range(0, 1000)),
    Key("logging", "enable_pynetdicom_debug", "bool", False, "Put pynetdicom's own debug lines in the log."),
)
# fmt: on
FOLDER_KEYS = ("paths.watch_dir", "paths.work_dir", "paths.archive_dir", "paths.failed_dir")
FILE_KEYS = ("paths.state_db", "logging.file")

_EXPECTED = {
    "path": "a folder or file path",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
}


@dataclass(frozen=True)
class Config:
    source: Path
    watch_dir: Path
    work_dir: Path
    archive_dir: Path
    failed_dir: Path
    state_db: Path
    peer: Peer  # the first dimse destination (the `dicom:` section when there is no `destinations:`)
    max_associations: int
    poll_interval_seconds: float
    wait_zip_complete_seconds: float
    unreadable_zip_grace_seconds: float
    send_batch_size: int
    dedup_policy: str
    delete_extracted_after_upload: bool
    move_zip_to_archive: bool
    retry_base_seconds: float
    retry_max_seconds: float
    give_up_after_hours: float
    observer: str
    limits: Limits
    log_level: str
    log_file: Path
    log_max_bytes: int
    log_backup_count: int
    log_pynetdicom_debug: bool
    destinations: tuple[Destination, ...] = ()
    destinations_given: bool = False  # False: the one destination is the `dicom:` section


def _fits_unquoted(kind: str, text: str) -> bool:
    """Return True when ``text`` written without quotes would be read as a value of ``kind`` (bool, int, float)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if kind == "bool" or isinstance(value, bool):
        return kind == "bool" and isinstance(value, bool)
    return isinstance(value, int if kind == "int" else (int, float))


def _got(key: Key, value: Any) -> str:
    """Return 'got X', saying so when X is a quoted number or boolean (a common slip: peer_port: "4242")."""
    if key.kind in ("bool", "int", "float") and isinstance(value, str) and _fits_unquoted(key.kind, value):
        return f"got the string {value!r} (remove the quotes)"
    return f"got {value!r}"


def _coerce(key: Key, value: Any, base: Path) -> tuple[Any, str | None]:
    """Return (value, problem); problem is 'expected X, got Y' or None."""
    got = _got(key, value)
    if key.kind == "optional_path":
        if isinstance(value, str) and not value.strip():
            return None, None
        key = Key(key.section, key.name, "path", key.default, key.meaning)
    if key.kind == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"expected true or false, {got}"
    if key.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            # A range check describes itself when handed a value out of every range.
            expected = key.check(-1) if key.check else None
            return None, f"expected {expected or 'an integer'}, {got}"
    elif key.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"expected a number, {got}"
        value = float(value)
    elif key.kind in ("str", "path", "choice"):
        if not isinstance(value, str) or (key.kind != "str" and not value.strip()):
            return None, f"expected {_EXPECTED.get(key.kind, 'one of ' + ', '.join(key.choices))}, {got}"
        value = value.strip()
        if key.kind == "choice":
            match = {c.upper(): c for c in key.choices}.get(value.upper()) if key.section == "logging" else None
            value = match or value
            if value not in key.choices:
                return None, f"expected one of {', '.join(key.choices)}, {got}"
        if key.kind == "path":
            return resolve_path(value, base), None
    if key.check is not None:
        expected = key.check(value)
        if expected:
            return None, f"expected {expected}, {got}"
    return value, None


def load_config(path: Path) -> Config:
    """Read and validate the YAML file at ``path``; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file ({exc.strerror or exc})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(exc)]) from None
    return parse_config(raw if raw is not None else {}, path)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Return PyYAML's complaint as one line that starts with where it is (1-based line and column)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return "not valid YAML: " + " ".join(str(exc).split())
    mark, began = exc.problem_mark, exc.context_mark
    text = f"At line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {exc.problem}"
    if exc.context and began is not None:
        return text + f" ({exc.context} that began at line {began.line + 1}, column {began.column + 1})"
    return text + (f" ({exc.context})" if exc.context else "")


def parse_config(raw: Any, source: Path) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping of sections, got {type(raw).__name__}"])
    sections = {k.section for k in KEYS}
    for name in raw:
        if name not in sections and name != "destinations":
            expected = ", ".join(sorted(sections | {"destinations"}))
            problems.append(f"At '{name}': unknown section (expected one of {expected})")
    base = source.resolve().parent
    values: dict[str, Any] = {}
    for section in sorted(sections):
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            problems.append(f"At '{section}': expected a mapping of keys, got {given!r}")
            given = {}
        known = {k.name for k in KEYS if k.section == section}
        for name in given:
            if name not in known:
                problems.append(f"At '{section}.{name}': unknown key (expected one of {', '.join(sorted(known))})")
    for key in KEYS:
        entries = raw.get(key.section)
        given = entries if isinstance(entries, dict) else {}
        value = given.get(key.name, key.default)
        if value is None:
            value = key.default
        coerced, problem = _coerce(key, value, base)
        if problem:
            problems.append(f"At '{key.dotted}': {problem}")
        values[key.dotted] = coerced
    if not problems and values["behavior.retry_max_seconds"] < values["behavior.retry_base_seconds"]:
        problems.append("At 'behavior.retry_max_seconds': expected a number >= behavior.retry_base_seconds")
    if all(values[key] is not None for key in FOLDER_KEYS + FILE_KEYS):
        problems.extend(layout_problems(values, FOLDER_KEYS, FILE_KEYS))
    tls = None
    if values["dicom.use_tls"] and not any(p.startswith("At 'tls.") for p in problems):
        if values["tls.ca_file"] is None:
            problems.append(
                "At 'tls.ca_file': expected a PEM file of CA certificates when dicom.use_tls is true, got nothing"
            )
        else:
            tls = TlsSettings(
                values["tls.ca_file"], values["tls.cert_file"], values["tls.key_file"], values["tls.verify_hostname"]
            )
            problems.extend(tls_problems(tls))
    destinations: tuple[Destination, ...] = ()
    if not problems and raw.get("destinations") is not None:
        destinations, wrong = parse_destinations(
            raw["destinations"], base, _peer(values, tls), values["dicom.max_associations"], _host, _ae_title
        )
        problems.extend(wrong)
    if problems:
        raise ConfigError(source, problems)
    v = values
    peer = _peer(v, tls)
    if not destinations:
        destinations = (dimse(DEFAULT_NAME, peer, v["dicom.max_associations"]),)
    first = next((d for d in destinations if d.peer is not None), None)
    return Config(
        source=source,
        watch_dir=v["paths.watch_dir"],
        work_dir=v["paths.work_dir"],
        archive_dir=v["paths.archive_dir"],
        failed_dir=v["paths.failed_dir"],
        state_db=v["paths.state_db"],
        peer=first.peer if first is not None and first.peer is not None else peer,
        max_associations=v["dicom.max_associations"],
        poll_interval_seconds=v["behavior.poll_interval_seconds"],
        wait_zip_complete_seconds=v["behavior.wait_zip_complete_seconds"],
        unreadable_zip_grace_seconds=v["behavior.unreadable_zip_grace_seconds"],
        send_batch_size=v["behavior.send_batch_size"],
        dedup_policy=v["behavior.dedup_policy"],
        delete_extracted_after_upload=v["behavior.delete_extracted_after_upload"],
        move_zip_to_archive=v["behavior.move_zip_to_archive"],
        retry_base_seconds=v["behavior.retry_base_seconds"],
        retry_max_seconds=v["behavior.retry_max_seconds"],
        give_up_after_hours=v["behavior.give_up_after_hours"],
        observer=v["behavior.observer"],
        limits=Limits(
            max_total_bytes=v["limits.max_total_mb"] * MB,
            max_entries=v["limits.max_entries"],
            max_ratio=v["limits.max_compression_ratio"],
            min_free_bytes=v["limits.min_free_disk_mb"] * MB,
            nested_zip_depth=v["limits.nested_zip_depth"],
        ),
        log_level=v["logging.level"],
        log_file=v["logging.file"],
        log_max_bytes=v["logging.max_bytes"],
        log_backup_count=v["logging.backup_count"],
        log_pynetdicom_debug=v["logging.enable_pynetdicom_debug"],
        destinations=destinations,
        destinations_given=raw.get("destinations") is not None,
    )


def _peer(v: dict[str, Any], tls: TlsSettings | None) -> Peer:
    """Return the peer the `dicom:` and `tls:` sections describe (also the template of each dimse destination)."""
    return Peer(
        host=v["dicom.peer_host"],
        port=v["dicom.peer_port"],
        ae_title=v["dicom.peer_ae_title"],
        local_ae_title=v["dicom.local_ae_title"],
        local_port=v["dicom.local_port"],
        max_pdu=v["dicom.max_pdu"],
        acse_timeout=v["dicom.acse_timeout"],
        dimse_timeout=v["dicom.dimse_timeout"],
        network_timeout=v["dicom.network_timeout"],
        decompress=Decompress(v["behavior.decompress"]),
        tls=tls,
    )
