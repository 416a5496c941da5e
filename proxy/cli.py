"""The command line: ``ocpp-lc <command> [--config FILE] ...``.

Exit codes: 0 success; 1 runtime failure; 2 usage error or invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TextIO

from config.settings import Settings, SettingsError, load_settings
from policies.authorization import AuthEntry
from policies.local_list import ListFormatError, decode_csv, format_csv, parse_csv
from proxy.store import Store, StoreError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ocpp-lc",
        description="OCPP site controller: keeps a site charging when the CSMS link drops.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error or invalid settings.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the controller")
    serve.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    check = sub.add_parser("check-config", help="validate a settings file and exit")
    check.add_argument("file", nargs="?", metavar="FILE", help="settings file (TOML)")
    check.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    ll = sub.add_parser("local-list", help="the operator's site local list")
    ll_sub = ll.add_subparsers(dest="ll_command", required=True, metavar="ACTION")
    imp = ll_sub.add_parser(
        "import", help="replace the site list with a CSV file (all rows or none)"
    )
    imp.add_argument("file", metavar="FILE", help="CSV: id_tag,status,expiry,parent_id_tag")
    imp.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    exp = ll_sub.add_parser("export", help="write the site list as CSV")
    exp.add_argument("file", nargs="?", default="-", metavar="FILE", help="output (default -)")
    exp.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    show = ll_sub.add_parser("show", help="print the site list")
    show.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    ob = sub.add_parser("outbox", help="messages stored for the CSMS")
    ob_sub = ob.add_subparsers(dest="ob_command", required=True, metavar="ACTION")
    ob_show = ob_sub.add_parser("show", help="list stored messages, oldest first")
    ob_show.add_argument("--charger", metavar="IDENTITY", help="only this charger")
    ob_show.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    ob_dead = ob_sub.add_parser(
        "dead-letters", help="list messages the CSMS refused after every attempt"
    )
    ob_dead.add_argument("--charger", metavar="IDENTITY", help="only this charger")
    ob_dead.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    for name, text in (
        ("retry", "put dead letters back in the outbox (replayed at the next drain)"),
        ("drop", "delete dead letters for good"),
    ):
        cmd = ob_sub.add_parser(name, help=text)
        which = cmd.add_mutually_exclusive_group(required=True)
        which.add_argument("seq", nargs="?", type=int, help="the dead letter's seq")
        which.add_argument("--all", action="store_true", help="every dead letter")
        cmd.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    demo = sub.add_parser(
        "demo",
        help="watch the controller keep a demo site charging through an uplink outage",
        description="Run the controller between a demonstration CSMS and simulated OCPP 1.6 "
        "chargers, all in this process on loopback: sessions run online, the CSMS is stopped "
        "for a while (the controller answers the chargers and stores their transaction "
        "messages), then started again (the controller replays them). The status page URL "
        "is printed at the start; the last line compares what the chargers were answered "
        "with what the CSMS received.",
        epilog="Exit codes: 0 nothing lost; 1 a message answered to a charger never reached "
        "the CSMS, or the demonstration could not run; 2 usage error; 130 interrupted.",
    )
    demo.add_argument(
        "--chargers", type=_positive_int, default=5, metavar="N", help="simulated chargers (5)"
    )
    demo.add_argument(
        "--outage",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long the uplink stays cut (10)",
    )
    demo.add_argument(
        "--online",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long sessions run online before the cut (5)",
    )
    demo.add_argument(
        "--keep-open",
        action="store_true",
        help="keep serving after the summary, so the status page can be watched, until Ctrl-C",
    )
    demo.add_argument(
        "--store", metavar="FILE", help="SQLite file to use (default: a temporary directory)"
    )
    demo.add_argument(
        "--verbose", action="store_true", help="also show the controller's log (INFO) on stderr"
    )
    ch = sub.add_parser(
        "chargers",
        help="list the chargers: OCPP version, uplink state, outbox depth",
        description="List the chargers of the running controller, from its admin API at "
        "http://ADMIN.HOST:ADMIN.PORT/api/chargers (with admin.token when set). When the API "
        "cannot be reached, the list comes from the store instead: registered chargers and "
        "their outbox depths, without live state (uplink_state null, shown as '?').",
        epilog="Exit codes: 0 ok, also when the list came from the store; 1 the admin API "
        "refused or failed the request, or neither the API nor the store could be read; "
        "2 usage error or invalid settings.",
    )
    ch.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    ch.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of objects (identity, ocpp_version, uplink_state, connected, "
        "connected_since, outbox_depth, dead_letters) instead of a table",
    )
    return p


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    store = Store(settings.store.path, busy_timeout_ms=settings.store.busy_timeout_ms)
    before = set(threading.enumerate())
    try:
        await store.open()
    except BaseException:
        # Store.open closes what it opened. A connection that could not open at all
        # stops its thread by itself and tells the event loop when done: wait for that
        # while the loop still runs, or the thread fails on a closed loop with a traceback.
        for thread in set(threading.enumerate()) - before:
            await asyncio.to_thread(thread.join, 2.0)
        raise
    try:
        return await work(store)
    finally:
        await store.close()


#: What a store that cannot be opened, read or written raises.
STORE_ERRORS = (StoreError, sqlite3.Error, OSError)


def _store_failure(settings: Settings, exc: BaseException) -> str:
    """Why the store could not be used, in one line."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        text += (
            f" (another process held it longer than store.busy_timeout_ms = "
            f"{settings.store.busy_timeout_ms})"
        )
    return f"the store at {settings.store.path} failed: {text}"


#: Rows above which ``local-list import`` reports its progress on standard error.
PROGRESS_ROWS = 5000
#: Rows checked at a time when the progress is reported.
_CHUNK_ROWS = 2000


class Progress:
    """The progress of a long step on standard error.

    On a terminal: one line rewritten in place (``\\r``) with a bar, at most ten times a
    second. Otherwise (a log file, a pipe): one plain line at every tenth of the work.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._shown = -1.0
        self._tenth = 0
        self._open = False

    def update(self, done: int, unit: str = "rows") -> None:
        fraction = min(done / self.total, 1.0)
        if self.tty:
            now = time.monotonic()
            if now - self._shown < 0.1 and fraction < 1.0:
                return
            self._shown = now
            filled = int(fraction * 30)
            bar = "#" * filled + "-" * (30 - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {fraction:4.0%} {done:,}/{self.total:,} {unit}"
            )
            self._open = True
        else:
            tenth = int(fraction * 10)
            if tenth <= self._tenth:
                return
            self._tenth = tenth
            self.stream.write(f"{self.label}: {fraction:.0%} ({done:,} of {self.total:,} {unit})\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (the bar, if shown, ends first)."""
        self.end()
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()

    def end(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def parse_csv_with_progress(text: str, progress: Callable[[int], None]) -> dict[str, AuthEntry]:
    """:func:`~policies.local_list.parse_csv` of a large file, ``progress(rows)`` after
    each chunk of rows.

    The rows are checked in chunks, each under the file's header. Every valid row is one
    line (no valid field holds a line break), so the chunks' entries together are the
    file's. On any error the whole file is parsed again as one, so that the error and its
    line number are exactly those of :func:`parse_csv`.
    """
    body = text.removeprefix("\ufeff")
    cut = body.find("\n") + 1
    if cut == 0:
        return parse_csv(text)
    header = body[:cut]
    entries: dict[str, AuthEntry] = {}
    done = 0
    try:
        while cut < len(body):
            end = cut
            rows = 0
            while rows < _CHUNK_ROWS and end < len(body):
                found = body.find("\n", end)
                end = len(body) if found < 0 else found + 1
                rows += 1
            chunk = parse_csv(header + body[cut:end])
            if not chunk.keys().isdisjoint(entries):
                raise ListFormatError(0, "a duplicate across chunks")
            entries.update(chunk)
            done += rows
            progress(done)
            cut = end
    except ListFormatError:
        return parse_csv(text)
    return entries


async def _replace_site_list(
    store: Store, entries: dict[str, AuthEntry], progress: Progress | None
) -> None:
    """Replace the site list (one transaction); on a terminal, the seconds it takes."""
    if progress is None or not progress.tty:
        await store.replace_site_list(entries)
        return
    started = time.monotonic()
    task = asyncio.ensure_future(store.replace_site_list(entries))
    while not task.done():
        progress.stream.write(
            f"\r{progress.label}: writing {len(entries):,} entries to the store "
            f"({time.monotonic() - started:.1f} s)"
        )
        progress.stream.flush()
        await asyncio.wait({task}, timeout=0.2)
    progress.stream.write("\n")
    progress.stream.flush()
    await task


def _import_site_list(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"ocpp-lc: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        text = decode_csv(data)
    except ListFormatError as exc:
        print(f"ocpp-lc: {args.file}: {exc}; nothing imported", file=sys.stderr)
        return EXIT_FAILURE
    rows = text.count("\n") - 1 + (not text.endswith("\n"))  # after the header
    progress = Progress(f"ocpp-lc: importing {args.file}", rows) if rows > PROGRESS_ROWS else None
    try:
        if progress is None:
            entries = parse_csv(text)
        else:
            entries = parse_csv_with_progress(text, progress.update)
            progress.end()
    except ListFormatError as exc:
        if progress is not None:
            progress.end()
        print(f"ocpp-lc: {args.file}: {exc}; nothing imported", file=sys.stderr)
        return EXIT_FAILURE
    if progress is not None and not progress.tty:
        progress.note(f"writing {len(entries):,} entries to the store")

    committed = False

    async def replace(store: Store) -> int:
        nonlocal committed
        await _replace_site_list(store, entries, progress)
        committed = True
        return EXIT_OK

    try:
        code = asyncio.run(_with_store(settings, replace))
    except STORE_ERRORS as exc:
        if not committed:  # one transaction: the site list is as it was
            print(
                f"ocpp-lc: cannot import {args.file}: {_store_failure(settings, exc)}; "
                "nothing imported",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        # Committed, then closing the store failed: the import stands.
        print(f"ocpp-lc: {_store_failure(settings, exc)} after the import", file=sys.stderr)
        code = EXIT_OK
    print(f"imported {len(entries)} entries from {args.file}")
    return code


def _local_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.ll_command == "import":
        return _import_site_list(args, settings)

    out: list[str] = []

    async def export(store: Store) -> int:
        out.append(format_csv(dict(sorted((await store.load_site_list()).items()))))
        return EXIT_OK

    try:
        code = asyncio.run(_with_store(settings, export))
    except STORE_ERRORS as exc:
        if not out:
            print(
                f"ocpp-lc: cannot read the site list: {_store_failure(settings, exc)}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        code = EXIT_OK  # read in full; only closing the store failed
    if args.ll_command == "show" or args.file == "-":
        sys.stdout.write(out[0])
        return code
    try:
        Path(args.file).write_text(out[0], encoding="utf-8")
    except OSError as exc:
        print(f"ocpp-lc: cannot write {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code


def _outbox(args: argparse.Namespace, settings: Settings) -> int:
    async def show(store: Store) -> int:
        state = "dead" if args.ob_command == "dead-letters" else "pending"
        rows = await store.outbox(args.charger, state=state, limit=1_000_000)
        print("seq\tcharger\taction\tmessage_id\ttransaction_id\tattempts\tstate\tlast_error")
        for r in rows:
            print(
                f"{r.seq}\t{r.identity}\t{r.action}\t{r.message_id}\t{r.tx_id or ''}"
                f"\t{r.attempts}\t{r.state}\t{r.last_error or ''}"
            )
        return EXIT_OK

    async def change(store: Store) -> int:
        seq = None if args.all else args.seq
        if args.ob_command == "retry":
            n = await store.retry_dead(seq)
            print(f"{n} dead letter(s) put back in the outbox")
        else:
            n = await store.drop_dead(seq)
            print(f"{n} dead letter(s) dropped")
        return EXIT_OK if n or args.all else EXIT_FAILURE

    work = show if args.ob_command in ("show", "dead-letters") else change
    try:
        return asyncio.run(_with_store(settings, work))
    except STORE_ERRORS as exc:
        print(
            f"ocpp-lc: outbox {args.ob_command}: {_store_failure(settings, exc)}", file=sys.stderr
        )
        return EXIT_FAILURE


class _ApiUnreachable(Exception):
    """Nothing answered at the admin API's address."""


class _ApiFailed(Exception):
    """The admin API answered, but not with what was asked for."""


def admin_url(settings: Settings, path: str) -> str:
    """The URL of ``path`` on the admin server (a wildcard bind is reached on loopback)."""
    host = settings.admin.host
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind, reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.admin.port}{path}"


def _api_get(settings: Settings, path: str, timeout: float = 5.0) -> object:
    url = admin_url(settings, path)  # always http://, built from the settings
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if settings.admin.token is not None:
        request.add_header("Authorization", f"Bearer {settings.admin.token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(500).decode("utf-8", "replace")
        raise _ApiFailed(f"admin API at {url} answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _ApiUnreachable(f"admin API at {url} not reachable ({reason})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise _ApiFailed(f"admin API at {url} answered with something other than JSON") from None


async def _stored_chargers(store: Store) -> list[dict[str, object]]:
    counts = await store.outbox_counts()
    versions = await store.charger_versions()
    out: list[dict[str, object]] = []
    for identity in sorted(versions.keys() | counts.keys()):
        version = versions.get(identity)
        pending, dead = counts.get(identity, (0, 0))
        out.append(
            {
                "identity": identity,
                "ocpp_version": version.removeprefix("ocpp") if version else None,
                "uplink_state": None,
                "connected": None,
                "connected_since": None,
                "outbox_depth": pending,
                "dead_letters": dead,
            }
        )
    return out


def _print_chargers(chargers: list[dict[str, object]]) -> None:
    header = ("IDENTITY", "OCPP", "UPLINK", "OUTBOX", "DEAD", "CONNECTED SINCE")
    rows = [header]
    for c in chargers:
        connected = c.get("connected")
        if connected is None:
            state = "?"
        elif connected:
            state = str(c.get("uplink_state"))
        else:
            state = "not connected"
        rows.append(
            (
                str(c.get("identity")),
                str(c.get("ocpp_version") or "?"),
                state,
                str(c.get("outbox_depth", "")),
                str(c.get("dead_letters", "")),
                str(c.get("connected_since") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {3, 4}
    for row in rows:
        cells = [
            value.rjust(widths[i]) if i in numeric else value.ljust(widths[i])
            for i, value in enumerate(row)
        ]
        print("  ".join(cells).rstrip())


def _chargers(args: argparse.Namespace, settings: Settings) -> int:
    try:
        listed = _api_get(settings, "/api/chargers")
    except _ApiFailed as exc:
        print(f"ocpp-lc: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except _ApiUnreachable as exc:
        path = settings.store.path
        if not path.is_file():
            print(f"ocpp-lc: {exc}, and there is no store at {path}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"ocpp-lc: {exc}; listing what the store at {path} holds", file=sys.stderr)
        found: list[list[dict[str, object]]] = []

        async def read(store: Store) -> int:
            found.append(await _stored_chargers(store))
            return EXIT_OK

        try:
            asyncio.run(_with_store(settings, read))
        except (StoreError, sqlite3.Error, OSError) as error:
            print(f"ocpp-lc: cannot read the store at {path}: {error}", file=sys.stderr)
            return EXIT_FAILURE
        listed = found[0]
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        print("ocpp-lc: the admin API answered with something other than a list", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(listed, indent=2))
    else:
        _print_chargers(listed)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    # Imported here: the demonstration (and its simulated chargers and CSMS) is never
    # part of the service.
    from proxy.demo.run import Options, run_demo

    return run_demo(
        Options(
            chargers=args.chargers,
            outage=args.outage,
            online=args.online,
            keep_open=args.keep_open,
            store=Path(args.store) if args.store else None,
            verbose=args.verbose,
        )
    )


def _run_loop(settings: Settings) -> None:
    from proxy.app import serve

    use_uvloop = settings.runtime.loop in ("auto", "uvloop")
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            if settings.runtime.loop == "uvloop":
                raise
        else:
            uvloop.run(serve(settings))
            return
    asyncio.run(serve(settings))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    try:
        if args.command == "check-config":
            path = args.file or args.config
            if path is None:
                print("ocpp-lc check-config: a settings FILE is required", file=sys.stderr)
                return EXIT_USAGE
            from proxy.admin import check_exposure

            check_exposure(load_settings(path).admin)
            print(f"{path}: ok")
            return EXIT_OK
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"ocpp-lc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "local-list":
        return _local_list(args, settings)
    if args.command == "outbox":
        return _outbox(args, settings)
    if args.command == "chargers":
        return _chargers(args, settings)
    from config.logging import setup_logging

    setup_logging(settings.log)
    try:
        _run_loop(settings)
    except SettingsError as exc:
        print(f"ocpp-lc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"ocpp-lc: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (StoreError, sqlite3.Error) as exc:
        print(f"ocpp-lc: cannot start: {_store_failure(settings, exc)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
