"""The uplink: one client connection per charger to ``<CSMS base URL>/<identity>``.

The uplink offers the charger's subprotocols; the one the CSMS picks is the one the
charger gets. The charger's ``Authorization`` and ``User-Agent`` headers go along, so
the CSMS sees the charger as if it were connected directly.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from config.settings import CsmsSettings
from proxy.direct import DirectClientConnection


class UplinkRefused(Exception):
    """The CSMS answered the handshake with an HTTP status other than 101."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"CSMS refused the handshake with HTTP {status}")
        self.status = status
        self.reason = reason


class UplinkUnavailable(Exception):
    """The CSMS could not be reached (refused, timed out, TLS or protocol failure)."""


#: Handshake answers that say the CSMS (or the load balancer in front of it) is in
#: trouble, not that it refuses this charger: the charger is served offline instead.
UNAVAILABLE_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True, slots=True)
class UplinkRequest:
    """What the uplink needs from the charger's handshake."""

    identity: str
    subprotocols: tuple[str, ...]
    authorization: str | None = None
    user_agent: str | None = None


def uplink_url(base: str, identity: str) -> str:
    return f"{base}/{quote(identity, safe='')}"


async def open_uplink(
    settings: CsmsSettings, request: UplinkRequest, tls: ssl.SSLContext | None = None
) -> ClientConnection:
    """Open the uplink of one charger or raise UplinkRefused / UplinkUnavailable.

    ``request.authorization`` is sent as it is: the charger's own header passed through,
    or the credentials configured for the charger.
    """
    headers: dict[str, str] = {}
    if request.authorization is not None:
        headers["Authorization"] = request.authorization
    try:
        return await connect(
            uplink_url(settings.url, request.identity),
            subprotocols=[Subprotocol(p) for p in request.subprotocols],
            additional_headers=headers,
            user_agent_header=request.user_agent,
            compression="deflate" if settings.compression else None,
            open_timeout=settings.open_timeout,
            ping_interval=settings.ping_interval or None,
            ping_timeout=settings.ping_timeout,
            # a blackholed uplink is given up ping_interval + ping_timeout after its
            # last pong, not ten more seconds of closing handshake
            close_timeout=min(settings.ping_timeout, 10.0),
            max_size=settings.max_message_size,
            proxy=None,
            ssl=tls,
            create_connection=DirectClientConnection,
        )
    except InvalidStatus as exc:
        response = exc.response
        if response.status_code in UNAVAILABLE_STATUSES:
            raise UplinkUnavailable(
                f"CSMS answered the handshake with HTTP {response.status_code}"
            ) from None
        raise UplinkRefused(response.status_code, response.reason_phrase) from None
    except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
        # WebSocketException covers a peer that accepts and closes at once
        # (ConnectionClosed), as a CSMS restarting behind a load balancer does.
        raise UplinkUnavailable(f"{type(exc).__name__}: {exc}") from None


def backoff(
    minimum: float = 1.0,
    maximum: float = 60.0,
    factor: float = 2.0,
    jitter: float = 1.0,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Waits between reconnect attempts: exponential, capped, with random jitter."""
    rnd = rng or random.Random()
    delay = minimum
    while True:
        yield min(maximum, delay) + rnd.uniform(0, jitter)
        delay *= factor


def first_common(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first of ``supported`` that the peer offered."""
    for p in supported:
        if p in offered:
            return p
    return None
