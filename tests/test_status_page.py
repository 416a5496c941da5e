"""The status page in a real browser: headless Chromium renders the chargers and the dead
letters that the page's own JavaScript fetched from the admin API, on a phone-sized
screen too.

Chromium comes from the Debian packages ``chromium`` and ``chromium-driver``. When they
are missing, the tests install them once (as root, with apt-get); where that is not
possible they are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from peers import ChargerPeer16, controller_url

from proxy.store import OutboxItem

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

# Installing Chromium on a fresh machine may take minutes.
pytestmark = pytest.mark.timeout(900)

INSTALL_COMMANDS = (
    ("apt-get", "update"),
    ("apt-get", "install", "-y", "chromium", "chromium-driver"),
)
#: Seconds each install command may take.
INSTALL_TIMEOUT = 600
#: Virtual milliseconds Chromium lets the page run (fetches included) before it reports.
BUDGET_MS = 5000
PHONE = (360, 740)
TOKEN = "page-Tok3n"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _install() -> str:
    """Install Chromium with apt-get; what went wrong, or "" when it worked."""
    if os.geteuid() != 0:
        return "not running as root, so apt-get cannot install it"
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in INSTALL_COMMANDS:
        try:
            done = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(command)} failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return f"{' '.join(command)} exited {done.returncode}: {tail[0]}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, installed once if missing; the tests skip if it cannot be."""
    found = _chromium()
    if found is not None:
        return found
    problem = _install()
    found = _chromium()
    if found is None:
        pytest.skip(
            "Chromium is needed to test the status page and could not be installed "
            f"({problem or 'apt-get install did not provide it'}); "
            "install the Debian packages chromium and chromium-driver"
        )
    return found


async def run_chromium(binary: str, profile: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium with ``args``; its standard output. The event loop keeps
    serving the admin API meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={BUDGET_MS}",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


class _Rows(HTMLParser):
    """The text of each table row, by table id: {table id: [[cell text, ...], ...]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_attrs: dict[str, list[dict[str, str | None]]] = {}
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables.setdefault(self._table, [])
            self.row_attrs.setdefault(self._table, [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self._row = []
            self.row_attrs[self._table].append(dict(attrs))
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data + " ")


def rows_of(dom: str) -> _Rows:
    parser = _Rows()
    parser.feed(dom)
    return parser


async def wait_for_sessions(ctl: Controller, *identities: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(i in ctl.chargers.sessions for i in identities):
        assert time.monotonic() < deadline, f"chargers {identities} did not connect"
        await asyncio.sleep(0.02)


@pytest.fixture
async def site(controller_factory: ControllerFactory) -> AsyncIterator[Controller]:
    """A controller with two chargers connected through a live CSMS and one dead letter."""
    ctl = await controller_factory()
    store = ctl.store
    frame = '[2,"m1","DataTransfer",{"vendorId":"X"}]'
    await store.append(OutboxItem("CP-GONE", "DataTransfer", "m1", frame, None, "d1"))
    [row] = await store.outbox("CP-GONE")
    await store.refused(row.seq, 3, "CALLERROR InternalError", dead=True)
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, "CP-PAGE-1"), ChargerPeer16(url, "CP-PAGE-2"):
        await wait_for_sessions(ctl, "CP-PAGE-1", "CP-PAGE-2")
        yield ctl


async def test_status_page_renders_chargers_and_dead_letters(
    chromium: str, site: Controller, tmp_path: Path
) -> None:
    """In Chromium, the page's JavaScript fills the chargers table (identity, uplink state,
    outbox depth) and the dead letters table from the admin API."""
    url = f"http://127.0.0.1:{site.admin_port}/"
    dom = await run_chromium(chromium, tmp_path / "profile", "--dump-dom", url)
    found = rows_of(dom)
    chargers = found.tables["chargers"]
    assert [row[0].split()[0] for row in chargers] == ["CP-GONE", "CP-PAGE-1", "CP-PAGE-2"]
    by_id = {row[0].split()[0]: row for row in chargers}
    assert by_id["CP-PAGE-1"][1] == "online"
    assert by_id["CP-PAGE-1"][2] == "0"
    assert "OCPP 1.6" in by_id["CP-PAGE-1"][0]
    assert by_id["CP-GONE"][1] == "not connected 1 dead"
    assert [a["data-state"] for a in found.row_attrs["chargers"]] == [
        "disconnected",
        "online",
        "online",
    ]
    [dead] = found.tables["dead-letters"]
    assert "CP-GONE" in dead[0]
    assert "DataTransfer" in dead[0]
    assert "CALLERROR InternalError" in dead[0]
    assert dead[1] == "3"
    assert 'id="error" role="alert" hidden' in dom


async def test_status_page_takes_the_token_from_the_address(
    chromium: str, controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Bound beyond loopback, the page opened with ?token= sends it on its API calls and
    renders the chargers; without the token the page itself is refused."""
    ctl = await controller_factory(admin={"host": "127.0.0.2", "token": TOKEN})
    async with ChargerPeer16(controller_url(ctl.listen_port), "CP-TOKEN"):
        await wait_for_sessions(ctl, "CP-TOKEN")
        base = f"http://127.0.0.2:{ctl.admin_port}/"
        dom = await run_chromium(chromium, tmp_path / "p1", "--dump-dom", f"{base}?token={TOKEN}")
        refused = await run_chromium(chromium, tmp_path / "p2", "--dump-dom", base)
    chargers = rows_of(dom).tables["chargers"]
    assert [(row[0].split()[0], row[1]) for row in chargers] == [("CP-TOKEN", "online")]
    assert "CP-TOKEN" not in refused
    assert 'id="chargers"' not in refused


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file (from its IHDR chunk)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


async def test_status_page_renders_on_a_phone_screen(
    chromium: str, site: Controller, tmp_path: Path
) -> None:
    """A 360 x 740 screenshot of the rendered page is taken (a phone in portrait), and the
    table is laid out at that width."""
    shot = tmp_path / "status-360.png"
    url = f"http://127.0.0.1:{site.admin_port}/"
    await run_chromium(
        chromium,
        tmp_path / "profile",
        f"--window-size={PHONE[0]},{PHONE[1]}",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        url,
    )
    assert shot.is_file()
    assert shot.stat().st_size > 1000
    assert png_size(shot) == PHONE
    dom = await run_chromium(
        chromium, tmp_path / "profile2", f"--window-size={PHONE[0]},{PHONE[1]}", "--dump-dom", url
    )
    assert len(rows_of(dom).tables["chargers"]) == 3
