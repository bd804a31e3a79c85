"""ZIP entry names made safe: decoded as the tool that wrote them meant, and rebuilt from parts that are valid
file names on Linux and Windows alike (no ``..``, drive letters, reserved names or characters DrvFs refuses)."""

from __future__ import annotations

import re
import zipfile

MAX_COMPONENT_BYTES = 200  # below the usual 255-byte limit, leaving room for "~N" and ".contents"
_INVALID_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_DRIVE = re.compile(r"^[A-Za-z]:")
_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)}


def decode_name(info: zipfile.ZipInfo) -> str:
    """Return the entry name, preferring UTF-8 when a tool wrote UTF-8 bytes without setting the flag."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def safe_parts(name: str) -> tuple[str, ...]:
    """Return the components of ``name`` that are safe as file names on Linux and Windows alike."""
    parts = []
    for raw in re.split(r"[/\\]", _DRIVE.sub("", name.lstrip("/\\"))):
        part = _INVALID_CHARS.sub("_", raw).rstrip(". ")  # "..", "." and Windows-invalid endings vanish
        if not part:
            continue
        if part.split(".")[0].upper() in _RESERVED:
            part = "_" + part
        parts.append(part.encode()[:MAX_COMPONENT_BYTES].decode(errors="ignore").rstrip(". ") or "_")
    return tuple(parts)


def shown(name: str) -> str:
    """Return ``name`` quoted for a message, cut short: a ZIP entry name may be 64 KiB long."""
    return repr(name if len(name) <= 200 else name[:200] + "...")


def suffixed(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}~{n}.{ext}" if dot and stem else f"{name}~{n}"
