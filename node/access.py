"""Who may associate: calling AE titles, each optionally pinned to addresses or networks and,
over TLS, to a certificate (its SHA-256 fingerprint) or a certificate subject.

A pin is an IP address, a network in CIDR form (``10.1.0.0/16``) or a host name. A name is
resolved to its addresses when the allow-list is built, so ``localhost`` matches a caller at
127.0.0.1 or ::1 (a pin compared as text never did). A peer's IPv4 address written as IPv6
(``::ffff:10.1.2.3``, from a dual-stack socket) matches the IPv4 pin.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def peer_address(host: str) -> IPAddress | None:
    """The peer's address as an IP address (IPv4-mapped IPv6 as IPv4); None if unreadable."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class PeerCertificate:
    """What a TLS caller presented: its DER certificate and, once verified, its subject."""

    der: bytes
    subject: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class CallerPin:
    """One allowed calling AE title: from where (None: anywhere), and over TLS with which
    certificate (SHA-256 fingerprint) or subject (None: any or none)."""

    ae_title: str
    networks: tuple[Network, ...] | None = None
    fingerprint: str | None = None
    subject: frozenset[tuple[str, str]] | None = None

    def refusal(self, address: IPAddress | None, certificate: PeerCertificate | None) -> str | None:
        """Why this pin does not admit the caller; None when it does."""
        if self.networks is not None and (
            address is None or not any(address in n for n in self.networks)
        ):
            return "calls from an address its pin does not list"
        if self.fingerprint is None and self.subject is None:
            return None
        if certificate is None:
            return "is pinned to a TLS certificate and presented none"
        if self.fingerprint is not None and hashlib.sha256(certificate.der).hexdigest() != (
            self.fingerprint
        ):
            return "presented a certificate other than its pinned one"
        if self.subject is not None and certificate.subject != self.subject:
            return "presented a certificate whose subject is not its pinned one"
        return None


class CallerAllowList:
    """Calling AE titles with where, and with which certificate, each may call."""

    def __init__(self, pins: Iterable[CallerPin]) -> None:
        self._pins = tuple(pins)

    def refusal(
        self, calling_ae: str, host: str, certificate: PeerCertificate | None = None
    ) -> str | None:
        """Why the caller is refused (for the log and the audit trail); None if allowed."""
        pins = [pin for pin in self._pins if pin.ae_title == calling_ae]
        if not pins:
            return "not in access.callers"
        address = peer_address(host)
        reasons = [pin.refusal(address, certificate) for pin in pins]
        return None if None in reasons else str(reasons[0])
