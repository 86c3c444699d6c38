"""Where an org's webhook may point: the rules checked when it is saved and again at every delivery.

* `https` only; plain `http` only for a host the operator lists in CREDIT_WEBHOOK_HTTP_HOSTS.
* Every address the host resolves to must be public: loopback, private, link-local (so the cloud
  metadata service 169.254.169.254 and fd00:ec2::254), multicast, reserved and unspecified addresses
  are refused. Hosts the operator lists are trusted as they are (a receiver on 127.0.0.1).

The delivery resolves again and connects to the address it checked (DNS can change between the save
and the send); `Resolver` is the hook it and the save use, replaceable in tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from .errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


class RefusedAddress(Exception):
    """The URL's scheme or one of its host's addresses is not allowed."""


def parse_hosts(value: str) -> frozenset[str]:
    """CREDIT_WEBHOOK_HTTP_HOSTS: comma-separated host names or addresses, compared in lower case."""
    return frozenset(h.strip().lower().strip("[]") for h in value.split(",") if h.strip())


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address of `host` (the operating system's resolver, without blocking the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def forbidden(address: IPAddress) -> bool:
    """True for addresses a tenant's webhook must not reach."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return forbidden(address.ipv4_mapped)
    return (address in METADATA_ADDRESSES or address.is_private or address.is_loopback or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified or not address.is_global)


def target(url: str, http_hosts: frozenset[str]) -> tuple[str, str, int, bool]:
    """(scheme, host, port, operator-allowed) of a URL, or RefusedAddress for plain http elsewhere."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    allowed = host in http_hosts
    if parts.scheme != "https" and not (parts.scheme == "http" and allowed):
        raise RefusedAddress("only https (plain http only for hosts in CREDIT_WEBHOOK_HTTP_HOSTS)")
    return parts.scheme, host, parts.port or (443 if parts.scheme == "https" else 80), allowed


async def checked_addresses(url: str, http_hosts: frozenset[str], resolver: Resolver) -> tuple[str, int, list[str]]:
    """(host, port, addresses to connect to): every address checked, RefusedAddress if any is forbidden."""
    _, host, port, allowed = target(url, http_hosts)
    try:
        addresses = [host] if _is_literal(host) else await resolver(host, port)
    except OSError as error:
        raise RefusedAddress(f"{host} does not resolve") from error
    if not addresses:
        raise RefusedAddress(f"{host} does not resolve")
    if not allowed:
        bad = [a for a in addresses if forbidden(ipaddress.ip_address(a))]
        if bad:
            raise RefusedAddress(f"{host} resolves to a non-public address")
    return host, port, addresses


async def require_webhook_target(url: str, http_hosts: frozenset[str], resolver: Resolver = system_resolver) -> None:
    """The save-time check: INVALID_ARGUMENT naming `url` when the URL may not be used (a host the
    operator lists is not looked up: it is trusted)."""
    try:
        if not target(url, http_hosts)[3]:
            await checked_addresses(url, http_hosts, resolver)
    except RefusedAddress as refused:
        raise InvalidArgument("url", str(refused)) from None


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
