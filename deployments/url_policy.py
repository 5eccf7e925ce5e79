"""Which URLs and addresses the fetcher may reach: public unicast only, unless allow-listed."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from yarl import URL

from classifiers.errors import ModerationError
from deployments.settings import FetchSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not covered by ``is_global``'s complement on every Python version.
EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n) for n in ("100.64.0.0/10", "0.0.0.0/8", "192.0.0.0/24", "64:ff9b::/96")
)


_NUMERIC_V4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)


@dataclass(frozen=True)
class AddressPolicy:
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: FetchSettings) -> "AddressPolicy":
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks))

    def allows(self, address: str | IPAddress) -> bool:
        """True for public unicast addresses and for addresses in an allow-listed network."""
        try:
            ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed_networks if net.version == ip.version):
            return True
        if not ip.is_global or ip.is_multicast or ip.is_reserved:
            return False
        return not any(ip in net for net in EXTRA_BLOCKED if net.version == ip.version)


def check_url(url: URL, settings: FetchSettings, policy: AddressPolicy) -> None:
    """Refuse a URL before any connection: scheme, credentials, port and IP-literal hosts."""
    if url.scheme not in ("http", "https"):
        raise ModerationError("url_forbidden", "only http and https URLs can be fetched")
    if url.user is not None or url.password is not None:
        raise ModerationError("url_forbidden", "URLs with credentials are not allowed")
    if not url.host:
        raise ModerationError("url_forbidden", "the URL has no host")
    if url.port not in settings.allowed_ports:
        raise ModerationError("url_forbidden", f"port {url.port} is not allowed")
    literal = ip_literal(url.host)
    if literal is None:
        return  # a name: the guarded resolver checks every address it resolves to
    if not policy.allows(literal):
        raise ModerationError("url_forbidden", "the URL points to a forbidden address")


def ip_literal(host: str) -> IPAddress | None:
    """The address a host names literally, in any form the C resolver accepts:
    ``127.0.0.1``, ``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``[::ffff:127.0.0.1]``."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None
