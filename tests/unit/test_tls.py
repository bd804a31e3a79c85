"""DICOM TLS: settings checked at load time, stores over TLS to a pynetdicom SCP, handshake failures in one line."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from tests.certificates import Pki, make_pki
from tests.unit.test_sender import make_dicom
from zip2pacs.association import LANE_SWITCH, Peer, PeerUnavailable
from zip2pacs.cli import main
from zip2pacs.config import ConfigError, parse_config
from zip2pacs.probe import echo, probe
from zip2pacs.sender import Connection, Outcome, store
from zip2pacs.tls import TlsSettings

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_scp(pki: Pki) -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """Start a pynetdicom Storage SCP speaking TLS with a given certificate; return its port and received UIDs."""
    servers: list[ThreadedAssociationServer] = []

    def start(cert: Path = pki.server_cert, key: Path = pki.server_key, client_ca: Path | None = None):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca is not None:  # the server then requires a client certificate signed by client_ca
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        received: list[str] = []

        def on_store(event: evt.Event) -> int:
            received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        ae = AE(ae_title="TLSSCP")
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, UNCOMPRESSED)
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, ssl_context=context, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        servers.append(server)
        return server.socket.getsockname()[1], received

    yield start
    for server in servers:
        server.shutdown()


def tls_peer(port: int, ca_file: Path, **settings: object) -> Peer:
    timeouts = {"acse_timeout": 5.0, "dimse_timeout": 5.0, "network_timeout": 5.0}
    return Peer(port=port, ae_title="TLSSCP", tls=TlsSettings(ca_file, **settings), **timeouts)  # type: ignore[arg-type]


@pytest.mark.parametrize("way", ["lane", "fallback"])
def test_store_over_tls_delivers_to_a_peer_whose_certificate_the_ca_signed(
    tmp_path, pki, tls_scp, monkeypatch, way: str
) -> None:
    if way == "fallback":
        monkeypatch.setenv(LANE_SWITCH, "0")  # pynetdicom's send_c_store() speaks TLS instead
    port, received = tls_scp()
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(3)]

    with Connection(tls_peer(port, pki.ca_file)) as connection:
        results = connection.store(instances)
        if way == "lane":
            assert connection.lane is not None
            assert isinstance(connection.lane.sock, ssl.SSLSocket)  # the lane itself speaks TLS
        else:
            assert connection.lane is None

    assert [r.outcome for r in results] == [Outcome.STORED] * 3, results[0].detail
    assert received == [i.sop_instance_uid for i in instances]


def test_probe_over_tls_echoes_and_says_tls(pki, tls_scp) -> None:
    port, _ = tls_scp()

    result = probe(tls_peer(port, pki.ca_file))

    assert result.tls and result.echo.ok
    assert {c.sop_class: c.accepted for c in result.classes if c.accepted} == {CTImageStorage: tuple(UNCOMPRESSED)}


def test_a_wrong_ca_is_peer_unavailable_with_a_clear_tls_message(pki, tls_scp) -> None:
    port, received = tls_scp()

    with pytest.raises(PeerUnavailable) as info:
        echo(tls_peer(port, pki.other_ca_file))

    message = str(info.value)
    assert "TLS handshake failed: certificate verify failed" in message
    assert "tls.ca_file" in message
    assert received == []


def test_a_certificate_for_another_host_fails_unless_verify_hostname_is_off(pki, tls_scp) -> None:
    port, _ = tls_scp(cert=pki.elsewhere_cert, key=pki.elsewhere_key)

    with pytest.raises(PeerUnavailable, match="verify_hostname"):
        echo(tls_peer(port, pki.ca_file))
    assert echo(tls_peer(port, pki.ca_file, verify_hostname=False)).ok


def test_a_client_certificate_is_presented_to_a_peer_that_requires_one(tmp_path, pki, tls_scp) -> None:
    port, received = tls_scp(client_ca=pki.ca_file)
    instance = make_dicom(tmp_path, CTImageStorage)
    peer = tls_peer(port, pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key)

    [result] = store(peer, [instance])

    assert result.outcome is Outcome.STORED, result.detail
    assert received == [instance.sop_instance_uid]
    with pytest.raises(PeerUnavailable, match="client certificate"):  # and without it the peer will not talk
        echo(tls_peer(port, pki.ca_file))


def test_tls_to_a_peer_that_does_not_speak_it_fails_within_the_timeout(pki) -> None:
    ae = AE(ae_title="PLAIN")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        peer = Peer(
            port=server.socket.getsockname()[1],
            ae_title="PLAIN",
            acse_timeout=2,
            dimse_timeout=2,
            network_timeout=2,
            tls=TlsSettings(pki.ca_file),
        )
        with pytest.raises(PeerUnavailable, match="TLS"):
            echo(peer)
    finally:
        server.shutdown()


def config_problems(tmp_path: Path, tls: dict[str, object], use_tls: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"dicom": {"use_tls": use_tls}, "tls": tls}, tmp_path / "config.yaml")
    return info.value.problems


def test_tls_settings_are_read_relative_to_the_config_file_and_keep_the_peer_hashable(tmp_path, pki) -> None:
    (tmp_path / "certs").mkdir()
    for source in (pki.ca_file, pki.client_cert, pki.client_key):
        (tmp_path / "certs" / source.name).write_bytes(source.read_bytes())
    raw = {
        "dicom": {"use_tls": True},
        "tls": {"ca_file": "certs/ca.crt", "cert_file": "certs/client.crt", "key_file": "certs/client.key"},
    }

    peer = parse_config(raw, tmp_path / "config.yaml").peer

    assert peer.tls == TlsSettings(
        tmp_path / "certs/ca.crt", tmp_path / "certs/client.crt", tmp_path / "certs/client.key", True
    )
    assert hash(peer) == hash(parse_config(raw, tmp_path / "config.yaml").peer)
    assert parse_config({}, tmp_path / "config.yaml").peer.tls is None


def test_use_tls_without_a_ca_file_is_a_config_problem(tmp_path) -> None:
    assert config_problems(tmp_path, {}) == [
        "At 'tls.ca_file': expected a PEM file of CA certificates when dicom.use_tls is true, got nothing"
    ]


def test_missing_and_malformed_tls_files_are_config_problems(tmp_path, pki) -> None:
    (tmp_path / "notes.txt").write_text("not a certificate\n")

    missing = config_problems(
        tmp_path, {"ca_file": "nope.crt", "cert_file": "gone.crt", "key_file": str(pki.client_key)}
    )
    malformed = config_problems(tmp_path, {"ca_file": "notes.txt"})
    mismatched = config_problems(
        tmp_path, {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert), "key_file": str(pki.server_key)}
    )
    lonely_key = config_problems(tmp_path, {"ca_file": str(pki.ca_file), "key_file": str(pki.client_key)})

    assert missing == [
        f"At 'tls.ca_file': expected a readable PEM file, got '{tmp_path / 'nope.crt'}' (no such file)",
        f"At 'tls.cert_file': expected a readable PEM file, got '{tmp_path / 'gone.crt'}' (no such file)",
    ]
    assert len(malformed) == 1 and malformed[0].startswith("At 'tls.ca_file': expected PEM CA certificates, got ")
    assert len(mismatched) == 1 and mismatched[0].startswith("At 'tls.key_file': expected a PEM certificate and its")
    assert lonely_key == ["At 'tls.key_file': expected tls.cert_file too (a key without its certificate is of no use)"]


def test_tls_files_are_not_checked_while_use_tls_is_off(tmp_path) -> None:
    config = parse_config({"tls": {"ca_file": "nope.crt"}}, tmp_path / "config.yaml")
    assert config.peer.tls is None


def test_check_prints_one_clear_line_and_exits_1_when_the_ca_is_wrong(tmp_path, pki, tls_scp, capsys) -> None:
    port, _ = tls_scp()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"dicom: {{peer_port: {port}, peer_ae_title: TLSSCP, use_tls: true, acse_timeout: 5}}\n"
        f"tls: {{ca_file: '{pki.other_ca_file}'}}\n"
    )

    code = main([str(config), "--check"])

    out, err = capsys.readouterr()
    assert code == 1
    failure = [line for line in out.splitlines() if line.startswith("Association failed")]
    assert len(failure) == 1 and "TLS handshake failed: certificate verify failed" in failure[0]
    assert "over DICOM TLS" in out
    assert "Traceback" not in out + err
