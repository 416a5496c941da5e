"""Named crash points for the crash tests (RELIABILITY.md 5.2).

With ``OCPP_LC_CRASHPOINT=<name>:<n>`` in the environment, the n-th pass through the
point called ``name`` kills the process with SIGKILL, as a power cut would. Without the
variable, :func:`crashpoint` is a single comparison.

Points: ``before_commit``, ``after_commit_before_ack``, ``after_ack``,
``after_upstream_send``, ``after_callresult_before_mark``, ``mid_mapping_update``.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("OCPP_LC_CRASHPOINT", "")
_name, _, _count = _spec.partition(":")
_remaining = int(_count) if _count.isdigit() else 1
ARMED = bool(_name)


def armed(name: str) -> bool:
    """Whether the point called ``name`` is the one armed in this process."""
    return ARMED and name == _name


def crashpoint(name: str) -> None:
    """Kill the process here if this is the armed point's chosen pass."""
    global _remaining  # noqa: PLW0603 - one process-wide countdown
    if not ARMED or name != _name:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
