"""DICOM TLS on the requestor side: the settings, their checks, the SSL context and readable handshake errors."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(Exception):
    """The TLS settings cannot be used: a file is missing, unreadable or not what it should be."""


@dataclass(frozen=True)
class TlsSettings:
    ca_file: Path  # PEM certificates of the CAs that may sign the peer's certificate
    cert_file: Path | None = None  # our client certificate (PEM), for peers that ask for one
    key_file: Path | None = None  # its private key, when not in cert_file
    verify_hostname: bool = True  # the peer's certificate must name dicom.peer_host


class _RecordingSSLSocket(ssl.SSLSocket):
    """A TLS socket that keeps why its connect() or handshake failed (pynetdicom only logs it)."""

    def connect(self, address):  # type: ignore[no-untyped-def]
        try:
            super().connect(address)
        except OSError as exc:
            self.context.connect_error = exc  # type: ignore[attr-defined]
            raise


class RecordingContext(ssl.SSLContext):
    """A client SSL context whose sockets record their connect/handshake error in ``connect_error``."""

    sslsocket_class = _RecordingSSLSocket
    connect_error: OSError | None = None


def _no_passphrase() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal, hanging a service.
    return b""


def problems(settings: TlsSettings) -> list[str]:
    """Return one 'At 'tls.key': ...' line per unusable setting; empty when a TLS context can be built."""
    found: list[str] = []
    files = {"tls.ca_file": settings.ca_file, "tls.cert_file": settings.cert_file, "tls.key_file": settings.key_file}
    for key, path in files.items():
        if path is None:
            continue
        if not path.is_file():
            found.append(f"At '{key}': expected a readable PEM file, got '{path}' (no such file)")
        elif not os.access(path, os.R_OK):
            found.append(f"At '{key}': expected a readable PEM file, got '{path}' (permission denied)")
    if settings.key_file is not None and settings.cert_file is None:
        found.append("At 'tls.key_file': expected tls.cert_file too (a key without its certificate is of no use)")
    if found:
        return found
    try:
        client_context(settings)
    except TlsError as exc:
        found.append(str(exc))
    return found


def client_context(settings: TlsSettings) -> RecordingContext:
    """Return an SSL context that verifies the peer against ca_file; raise TlsError naming the bad setting."""
    context = RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED  # only the host name check is optional, never the chain
    try:
        context.load_verify_locations(cafile=str(settings.ca_file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsError(
            f"At 'tls.ca_file': expected PEM CA certificates, got '{settings.ca_file}' ({_reason(exc)})"
        ) from None
    if settings.cert_file is not None:
        key = str(settings.key_file) if settings.key_file is not None else None
        try:
            context.load_cert_chain(str(settings.cert_file), key, password=_no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as exc:
            where = "tls.key_file" if settings.key_file is not None else "tls.cert_file"
            raise TlsError(
                f"At '{where}': expected a PEM certificate and its unencrypted private key, "
                f"got '{settings.key_file or settings.cert_file}' ({_reason(exc)})"
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    """Return OpenSSL's reason without the source-file position, e.g. 'certificate verify failed: ...'."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def describe_handshake_error(exc: BaseException) -> str:
    """Return one line saying why the TLS connection failed and what setting to look at."""
    reason = _reason(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "mismatch" in reason or "hostname" in reason:
            hint = "the certificate does not name dicom.peer_host; fix it or set tls.verify_hostname: false"
        else:
            hint = "is tls.ca_file the CA that signed the peer's certificate?"
        return f"TLS handshake failed: {reason} ({hint})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {reason} (does the peer speak DICOM TLS on this port?)"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "TLS handshake failed: the peer closed the connection (does it speak DICOM TLS on this port?)"
    return f"TLS handshake failed: {reason}"


def describe_alert(exc: BaseException) -> str:
    """Return one line for a TLS alert the peer sent after the handshake (TLS 1.3 checks client certificates then)."""
    reason = _reason(exc)
    if "certificate" in reason:
        return f"the peer ended the TLS connection: {reason} (does it require a client certificate? see tls.cert_file)"
    return f"the peer ended the TLS connection: {reason}"
