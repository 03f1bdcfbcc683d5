"""The SSRF guard: a job's media URL may not make the worker reach internal addresses.

A host is resolved once and every address it resolves to is checked; loopback, private (RFC 1918,
fc00::/7), link-local (169.254/16 with the cloud metadata address, fe80::/10), the deprecated IPv6
site-local range (fec0::/10, which Python's ``ipaddress`` counts as global), unspecified, multicast,
reserved and other non-global addresses are refused with ``input.address_blocked``, unless the host
name, the address or a network containing it is in ``FetchSettings.allow_hosts``. IPv4 addresses
wrapped in IPv6 (``::ffff:10.0.0.1``, 6to4) are judged by the IPv4 address inside.

Numeric IPv4 spellings that are not dotted quads (``2130706433``, ``0177.0.0.1``, ``0x7f.0.0.1``,
``127.1``) are read here, the way the C resolver reads them (``inet_aton``), so they are judged as the
address they name without a DNS query, whatever resolver the host runs.

The caller connects to the address :func:`pin_address` returns (see ``worker.inputs.transport``), so
what was checked is what is dialled: the name is looked up once per hop, and a DNS answer that changes
afterwards (rebinding) cannot move the connection. The lookup is a parameter (:data:`Resolver`) so that
tests can play a rebinding DNS server against the real download path.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from producer.errors import INPUT_BLOCKED, INPUT_UNREACHABLE, error

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Looks a host name up: ``(host, port)`` to the addresses it names, as text, in resolver order.
Resolver = Callable[[str, int], Sequence[str]]
#: A host made only of the characters ``inet_aton`` reads as a number (``0x7f.1``, ``2130706433``).
_NUMERIC_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


@dataclass(frozen=True)
class AllowList:
    """Host names, addresses and networks exempt from the guard."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Read ``allow_hosts`` entries: ``media.internal``, ``10.1.2.3``, ``10.0.0.0/8``, ``fd00::/8``."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(address.version == net.version and address in net for net in self.networks)


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            return inner
    return address


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` is internal (``loopback``, ``private`` ...), or None if it is public."""
    address = _embedded_ipv4(address)
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link_local", address.is_link_local),
        # fec0::/10 was deprecated (RFC 3879) but still routes inside some networks; ipaddress calls it global.
        ("site_local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Shared (100.64/10), documentation and other special ranges: not ours to reach either.
        ("not_global", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system's resolver gives for ``host``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise error(INPUT_UNREACHABLE, "the media host name does not resolve", host=host) from exc
    return [str(info[4][0]) for info in infos]


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells out (any IPv4 spelling, or IPv6 with or without brackets), or None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def resolve(host: str, port: int, resolver: Resolver = system_resolver) -> list[IPAddress]:
    """Every address ``host`` names, in resolver order, without duplicates; one lookup at most."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    addresses: list[IPAddress] = []
    for text in resolver(host, port):
        # A scoped IPv6 address ("fe80::1%eth0") is judged without its scope.
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def pin_address(host: str, port: int, allow: AllowList, resolver: Resolver = system_resolver) -> str:
    """The address to connect to for ``host``, after checking every address it resolves to."""
    addresses = resolve(host, port, resolver)
    if not addresses:
        raise error(INPUT_UNREACHABLE, "the media host name resolves to nothing", host=host)
    for address in addresses:
        reason = blocked_reason(address)
        if reason is not None and not allow.allows(host, address):
            raise error(
                INPUT_BLOCKED, "the media URL leads to an internal address",
                host=host, address=str(address), reason=reason,
            )
    return str(addresses[0])
