"""One webhook POST under the rules of credit_service/webhook_policy.py.

The host is resolved and every address checked right before connecting, and the connection goes to the
checked address (SNI and Host carry the name): DNS answering differently since the save changes nothing.
The whole attempt — resolving, connecting, TLS, sending, reading the answer — runs under one total
deadline, so a receiver dripping one byte a second is cut off like one that never answers. The outcome is
a status code and an error *category* (never socket error text, which would let a tenant probe networks).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from ..webhook_policy import RefusedAddress, Resolver, checked_addresses, system_resolver

MAX_HEAD = 64 * 1024  # the answer's status line and headers; the body is not read


def status_category(status: int) -> str:
    return f"http_status_{status // 100}xx"


async def post(url: str, body: bytes, headers: dict[str, str], *, deadline: float, http_hosts: frozenset[str],
               resolver: Resolver = system_resolver) -> tuple[int | None, str]:
    """(status code or None, "" or an error category) of one POST, all of it within `deadline` seconds."""
    try:
        async with asyncio.timeout(deadline):
            host, port, addresses = await checked_addresses(url, http_hosts, resolver)
            status = await _send(url, host, port, addresses, body, headers)
    except RefusedAddress:
        return None, "refused_address"
    except TimeoutError:
        return None, "timeout"
    except (ssl.SSLError, ssl.CertificateError):
        return None, "tls_error"
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return None, "connection_failed"
    return status, "" if 200 <= status < 300 else status_category(status)


async def _send(url: str, host: str, port: int, addresses: list[str], body: bytes, headers: dict[str, str]) -> int:
    parts = urlsplit(url)  # checked_addresses has accepted its scheme
    context = ssl.create_default_context() if parts.scheme == "https" else None
    reader, writer = await _connect(addresses, port, context, host)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = 443 if parts.scheme == "https" else 80
        host_header = (f"[{host}]" if ":" in host else host) + ("" if port == default_port else f":{port}")
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}",
                 "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        head = await _read_head(reader)
        version, code, *_ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if not version.startswith(b"HTTP/1."):
            raise ValueError("not an HTTP answer")
        return int(code)
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await reader.read(4096)
        if not chunk:
            if head:
                return head
            raise EOFError("closed before answering")
        head += chunk
        if len(head) > MAX_HEAD:
            raise ValueError("answer head too long")
    return head


async def _connect(addresses: list[str], port: int, context: ssl.SSLContext | None,
                   host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first checked address that answers (never a fresh lookup)."""
    last: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(address, port, ssl=context,
                                                 server_hostname=host if context is not None else None)
        except ssl.SSLError:
            raise
        except OSError as error:
            last = error
    raise last or OSError("no address")
