"""The client address a per-address limit counts: the login limits' and the API's
rate limits (``users.access``) alike.

The address is read as DRF's throttles read it, from ``X-Forwarded-For`` behind
``NUM_PROXIES`` proxies, else the peer's. An IPv4 address counts whole; an IPv6
address by its network of ``CLIENT_IPV6_PREFIX`` bits (64 by default: a single
client is usually given a whole /64, and would otherwise have 2^64 addresses to
spread its attempts over); an IPv4 address mapped into IPv6 (``::ffff:a.b.c.d``,
from a dual-stack socket) counts as the IPv4 address. Anything that is no
address (a peer on a unix socket) counts by a digest of what was read, which
keeps key names to safe characters.
"""

from __future__ import annotations

import hashlib
import ipaddress

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from rest_framework.throttling import BaseThrottle


def client_address(request: HttpRequest) -> str:
    """The address group ``request`` counts against: ``203.0.113.7``,
    ``2001:db8:1:2::/64``."""
    ident = BaseThrottle().get_ident(request) or ""
    try:
        address = ipaddress.ip_address(ident)
    except ValueError:
        return f"unparsed-{hashlib.sha256(ident.encode()).hexdigest()[:32]}"
    return address_group(address)


def address_group(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    # int(): without the scope (fe80::1%eth0), which a network cannot carry.
    return str(ipaddress.IPv6Network((int(address), ipv6_prefix()), strict=False))


def named_group(text: str) -> str:
    """The group an operator names, by an address in it or as ``client_address``
    writes it; ``ValueError`` for anything else."""
    try:
        return address_group(ipaddress.ip_address(text))
    except ValueError:
        pass
    network = ipaddress.ip_network(text, strict=False)
    group = address_group(network.network_address)
    if group != str(network):
        raise ValueError(f"{text!r} is not an address, nor a group as the limits count them")
    return group


def ipv6_prefix() -> int:
    prefix = settings.CLIENT_IPV6_PREFIX
    if not (isinstance(prefix, int) and 1 <= prefix <= 128):
        raise ImproperlyConfigured(f"CLIENT_IPV6_PREFIX is {prefix!r}; use 1 to 128.")
    return prefix
