"""pynetdicom's storescu app with TCP_NODELAY on its association socket: same arguments as the app."""

from __future__ import annotations

import socket
import sys

from pynetdicom import transport
from pynetdicom.apps.storescu import storescu

_original_create_socket = transport.AssociationSocket._create_socket


def _create_socket_nodelay(self: transport.AssociationSocket, address: transport.AddressInformation) -> socket.socket:
    sock = _original_create_socket(self, address)
    # Without it the C-STORE command PDU and the last data fragment wait on Nagle for the peer's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


if __name__ == "__main__":
    transport.AssociationSocket._create_socket = _create_socket_nodelay  # type: ignore[method-assign]
    storescu.main(sys.argv[1:])
