"""A throw-away PKI for DICOM TLS tests: a CA, a server and a client certificate, and a CA that signed neither."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest

x509 = pytest.importorskip("cryptography.x509", reason="the TLS tests make certificates with 'cryptography'")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the CA that signed the server and client certificates
    server_cert: Path  # for localhost and 127.0.0.1
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path  # a CA that signed nothing here: the wrong tls.ca_file
    elsewhere_cert: Path  # signed by ca_file, but for another host name only
    elsewhere_key: Path


def _key() -> rsa.RSAPrivateKey:
    # RSA, not EC: dcmtk's TLS profiles (Orthanc's DICOM TLS) are sure to take it.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
    hosts: tuple[str, ...] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """Write a CA, certificates signed by it (server, client, another host) and an unrelated CA into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = _key(), _key()
    ca = _certificate("Test DICOM CA", ca_key, None)
    ca_issuer = (ca.subject, ca_key)
    leaves = {}
    for name, hosts, usage in (
        ("server", ("localhost", "127.0.0.1"), ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", (), ExtendedKeyUsageOID.CLIENT_AUTH),
        ("elsewhere", ("pacs.elsewhere.example",), ExtendedKeyUsageOID.SERVER_AUTH),
    ):
        key = _key()
        leaves[name] = _write(folder / f"{name}.crt", _certificate(name, key, ca_issuer, hosts, usage), key)
    return Pki(
        ca_file=_write(folder / "ca.crt", ca),
        server_cert=leaves["server"],
        server_key=leaves["server"].with_suffix(".key"),
        client_cert=leaves["client"],
        client_key=leaves["client"].with_suffix(".key"),
        other_ca_file=_write(folder / "other-ca.crt", _certificate("Some Other CA", other_key, None)),
        elsewhere_cert=leaves["elsewhere"],
        elsewhere_key=leaves["elsewhere"].with_suffix(".key"),
    )
