"""What to do with a transaction the CSMS refuses after it started offline.

OCPP 1.6 §3.5.1 / 2.0.1 E05: with StopTransactionOnInvalidId the transaction is stopped
with reason DeAuthorized; without it, only energy delivery stops, once
MaxEnergyOnInvalidId Wh have been delivered since the start, and the transaction stays
open. The controller reads the two settings the same way for both versions: the stop
setting wins; the energy limit only applies when the stop setting is off, and a limit
of 0 suspends energy at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    NONE = "none"  # accepted, or already ended: only replayed
    STOP = "stop"  # ask the charger to stop; report the stop as DeAuthorized
    SUSPEND = "suspend"  # set a 0 limit now
    WATCH = "watch"  # let it charge; suspend when the limit is reached


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    limit_wh: int | None = None


def on_refused_start(
    status: str,
    *,
    running: bool,
    stop_on_invalid_id: bool,
    max_energy_wh: int,
    delivered_wh: float | None,
) -> Decision:
    """Decide for a replayed start answered with ``status`` (idTagInfo/idTokenInfo)."""
    if status == "Accepted" or not running:
        return Decision(Action.NONE)
    if stop_on_invalid_id:
        return Decision(Action.STOP)
    if limit_reached(delivered_wh, max_energy_wh):
        return Decision(Action.SUSPEND, max_energy_wh)
    return Decision(Action.WATCH, max_energy_wh)


def limit_reached(delivered_wh: float | None, max_energy_wh: int) -> bool:
    """Whether the energy delivered since the start has reached the limit."""
    if max_energy_wh <= 0:
        return True
    return delivered_wh is not None and delivered_wh >= max_energy_wh


def retry_wait(interval: float, transmissions: int) -> float:
    """Seconds before the next transmission: the interval times the transmissions so far."""
    return interval * transmissions


def is_dead_letter(transmissions: int, attempts: int) -> bool:
    """Whether a message refused ``transmissions`` times has used up its attempts."""
    return transmissions >= attempts
