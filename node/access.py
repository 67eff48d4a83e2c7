"""Who may associate: calling AE titles, each optionally pinned to addresses or networks.

A pin is an IP address, a network in CIDR form (``10.1.0.0/16``) or a host name. A name is
resolved to its addresses when the allow-list is built, so ``localhost`` matches a caller at
127.0.0.1 or ::1 (a pin compared as text never did). A peer's IPv4 address written as IPv6
(``::ffff:10.1.2.3``, from a dual-stack socket) matches the IPv4 pin.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def host_networks(host: str) -> tuple[Network, ...]:
    """The networks a pin stands for; ValueError, saying what to write, when it cannot."""
    try:
        return (ipaddress.ip_network(host, strict=False),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(
            f"host {host!r} is neither an IP address, a network (CIDR, e.g. 10.1.0.0/16) nor "
            f"a name this machine resolves ({exc}); write the caller's address or network"
        ) from exc
    return tuple(sorted({ipaddress.ip_network(info[4][0]) for info in infos}, key=str))


def peer_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address as an IP address (IPv4-mapped IPv6 as IPv4); None if unreadable."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class CallerAllowList:
    """Calling AE titles with the networks each may call from (None: from anywhere)."""

    def __init__(self, callers: Iterable[tuple[str, str | None]]) -> None:
        self._pins: list[tuple[str, tuple[Network, ...] | None]] = [
            (title, host_networks(host) if host else None) for title, host in callers
        ]

    def allows(self, calling_ae: str, host: str) -> bool:
        address = peer_address(host)
        return any(
            title == calling_ae
            and (networks is None or (address is not None and any(address in n for n in networks)))
            for title, networks in self._pins
        )
