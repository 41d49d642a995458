"""UDP endpoints as every daemon uses them: ``HOST:PORT`` parsing, sockets, the TOS byte.

The DSCP a datagram carries is the upper six bits of its IPv4 TOS / IPv6 traffic-class byte.
Receivers read it per datagram with ``IP_RECVTOS``/``IPV6_RECVTCLASS`` and ``recvmsg``
(:func:`enable_tos_reception`, :func:`read_tos`); senders set it on their socket before a
datagram, only when it changes (:class:`TosSetter`).
"""

from __future__ import annotations

import ipaddress
import socket
import sys

__all__ = ["parse_hostport", "is_loopback", "resolve", "udp_socket", "enable_tos_reception", "read_tos", "set_tos",
           "TosSetter", "ANCILLARY_SIZE", "MAX_DATAGRAM"]

_IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
_IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
#: ``recvmsg`` ancillary buffer that holds a TOS and a traffic class.
ANCILLARY_SIZE = socket.CMSG_SPACE(4) * 2
MAX_DATAGRAM = 65535


def parse_hostport(text: str, default_host: str | None = "0.0.0.0") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` -> (host, port); ValueError names what is wrong.

    ``:PORT`` takes ``default_host``; with ``default_host=None`` the host is required."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise ValueError(f"bad address {text!r}: missing ']'")
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}: write HOST:PORT or [IPV6]:PORT")
        if ":" in host:
            raise ValueError(f"bad address {text!r}: put an IPv6 address in brackets, [::1]:5004")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad port in {text!r}: write HOST:PORT or [IPV6]:PORT") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    if not host and default_host is None:
        raise ValueError(f"bad address {text!r}: write HOST:PORT or [IPV6]:PORT")
    return (host or default_host), port


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a name is resolved."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def resolve(host: str, port: int, passive: bool = False) -> tuple[int, tuple]:
    """(address family, sockaddr) of a UDP endpoint."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0,
                                   socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def enable_tos_reception(sock: socket.socket) -> None:
    """Ask the kernel to hand us each datagram's TOS / traffic class byte."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVTCLASS, 1)
        try:  # IPv4-mapped arrivals on a dual-stack socket report IP_TOS
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTOS, 1)
        except OSError:
            pass
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTOS, 1)


def read_tos(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The TOS / traffic-class byte from ``recvmsg`` ancillary data; None when absent."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind in (socket.IP_TOS, _IP_RECVTOS) and data:
            return data[0]
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_TCLASS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder) & 0xFF
    return None


def set_tos(sock: socket.socket, tos: int) -> None:
    """Mark what ``sock`` sends next with this TOS / traffic-class byte."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_TCLASS, tos)
        try:  # for IPv4-mapped destinations
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        except OSError:
            pass
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)


class TosSetter:
    """Sets a socket's outgoing TOS only when it changes (one setsockopt per change, not per packet)."""

    def __init__(self, sock: socket.socket, current: int = -1) -> None:
        self.sock = sock
        self.current = current  # -1: unknown, the first set() always reaches the socket
        self.changes = 0

    def set(self, tos: int) -> None:
        if tos == self.current:
            return
        set_tos(self.sock, tos)
        self.current = tos
        self.changes += 1


def udp_socket(family: int, bind: tuple | None = None, rcvbuf: int | None = None, recv_tos: bool = False,
               blocking: bool = False, dual_stack: bool = False) -> socket.socket:
    """A UDP socket of ``family``; bound to ``bind`` (default: any address, a free port).

    ``recv_tos`` asks for each datagram's TOS (:func:`read_tos`); ``dual_stack`` lets an IPv6
    socket bound to the unspecified address take IPv4 too.  A bind failure closes the socket
    and raises OSError."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if bind is None:
            bind = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        if dual_stack and family == socket.AF_INET6 and \
                ipaddress.ip_address(bind[0].split("%")[0]).is_unspecified:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if recv_tos:
            enable_tos_reception(sock)
        sock.setblocking(blocking)
        sock.bind(bind)
    except OSError:
        sock.close()
        raise
    return sock
