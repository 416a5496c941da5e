"""Tests of proxy.cli: ``main(argv)`` exit codes and messages, and ``python -m proxy``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import ENV_PREFIX
from proxy.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OCPP_LC_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    """A valid settings file."""
    path = tmp_path / "site.toml"
    path.write_text('[listen]\nport = 9001\n[csms]\nurl = "wss://csms.example/ocpp"\n')
    return path


def test_exit_codes_are_the_documented_ones() -> None:
    """0 success, 2 usage error or invalid settings."""
    assert (EXIT_OK, EXIT_USAGE) == (0, 2)


def test_check_config_of_a_valid_file(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config FILE returns 0 and prints that the file is ok."""
    assert main(["check-config", str(good_file)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{good_file}: ok\n"
    assert err == ""


def test_check_config_with_the_config_option(
    good_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config --config FILE works like the positional FILE."""
    assert main(["check-config", "--config", str(good_file)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[listen]\nportt = 1\n", "listen.portt: unknown setting"),
        ('[listen]\nport = "x"\n', "listen.port:"),
        ("[listen\n", "cannot be read"),
        ('[csms]\nurl = "http://x"\n', "csms.url:"),
    ],
)
def test_check_config_of_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    """check-config of an invalid file returns 2 with one line on stderr, nothing on stdout."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ocpp-lc: ")
    assert err.endswith("\n") and err.count("\n") == 1
    assert fragment in err


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config of a file that does not exist returns 2 with one line on stderr."""
    path = tmp_path / "nope.toml"
    assert main(["check-config", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(path) in err


def test_check_config_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    """check-config with no FILE returns 2 and says a FILE is required."""
    assert main(["check-config"]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "FILE is required" in err
    assert err.count("\n") == 1


def test_check_config_sees_environment_errors(
    good_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config validates the effective settings, variables included."""
    monkeypatch.setenv("OCPP_LC_LISTEN__PORT", "not-a-port")
    assert main(["check-config", str(good_file)]) == EXIT_USAGE
    assert "listen.port" in capsys.readouterr().err


def test_serve_with_a_bad_file_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve --config with an invalid file returns 2 without starting anything."""
    path = tmp_path / "bad.toml"
    path.write_text("[listen]\nportt = 1\n")
    assert main(["serve", "--config", str(path)]) == EXIT_USAGE
    assert "listen.portt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["check-config", "--help"],
        ["local-list", "--help"],
        ["local-list", "import", "--help"],
        ["local-list", "export", "--help"],
        ["local-list", "show", "--help"],
        ["outbox", "--help"],
        ["outbox", "show", "--help"],
    ],
    ids=" ".join,
)
def test_help_of_each_command_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help of the program and of each command prints usage and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: ocpp-lc" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check-config", "--nope"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """No command, an unknown command or an unknown option exits 2 with usage on stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    assert "usage: ocpp-lc" in capsys.readouterr().err


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m proxy`` with ``args`` from the repository, with no OCPP_LC_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_module_entry_point_checks_a_file(good_file: Path, tmp_path: Path) -> None:
    """``python -m proxy check-config FILE`` exits 0 on a good file and 2 on a bad one."""
    good = run_module("check-config", str(good_file))
    assert (good.returncode, good.stdout, good.stderr) == (0, f"{good_file}: ok\n", "")
    bad_path = tmp_path / "bad.toml"
    bad_path.write_text("[listen]\nportt = 1\n")
    bad = run_module("check-config", str(bad_path))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "listen.portt: unknown setting" in bad.stderr


def serve_once(store: Path, port: int = 0) -> subprocess.CompletedProcess[str]:
    """``python -m proxy serve`` on ``store`` and ``port`` (no other OCPP_LC_ setting of
    the caller's), run until it exits (30 s at most)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OCPP_LC_")},
        "OCPP_LC_LISTEN__HOST": "127.0.0.1",
        "OCPP_LC_LISTEN__PORT": str(port),
        "OCPP_LC_ADMIN__PORT": "0",
        "OCPP_LC_STORE__PATH": str(store),
    }
    return subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_exits_at_once_when_its_port_is_taken(tmp_path: Path) -> None:
    """A taken listen port: one readable line and a non-zero exit, not a process left
    hanging on the threads of a store it had opened."""
    import socket
    import time

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        began = time.monotonic()
        done = serve_once(tmp_path / "lc.sqlite3", blocker.getsockname()[1])
    assert done.returncode != 0
    assert "cannot start" in done.stderr and "address already in use" in done.stderr.lower()
    assert time.monotonic() - began < 15


def test_serve_exits_at_once_when_its_store_is_not_sqlite(tmp_path: Path) -> None:
    """A store file that is not SQLite (or is damaged past opening): one readable line
    naming it and a non-zero exit, not a traceback and a process left hanging on the
    threads of the store it half opened."""
    store = tmp_path / "lc.sqlite3"
    store.write_text("not an SQLite database\n" * 200, encoding="utf-8")
    done = serve_once(store)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot start: the store at {store} failed: file is not a database" in done.stderr


# --------------------------------------------------------------------------- local-list

SITE_CSV = (
    "id_tag,status,expiry,parent_id_tag\n"
    "card-7,,,FLEET-1\n"
    "OLDCARD,Blocked,,\n"
    "04A2B3C4D5,Accepted,2026-12-31T23:59:59+01:00,\n"
)
#: What ``local-list show`` prints for SITE_CSV: sorted by id tag, stored upper-cased,
#: expiries in UTC.
SITE_SHOWN = (
    "id_tag,status,expiry,parent_id_tag\n"
    "04A2B3C4D5,Accepted,2026-12-31T22:59:59Z,\n"
    "CARD-7,Accepted,,FLEET-1\n"
    "OLDCARD,Blocked,,\n"
)


@pytest.fixture
def store_config(tmp_path: Path) -> Path:
    """A settings file naming a store in tmp_path, busy_timeout 100 ms."""
    path = tmp_path / "site.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "lc.sqlite3"}"\nbusy_timeout_ms = 100\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def site_csv(tmp_path: Path) -> Path:
    path = tmp_path / "cards.csv"
    path.write_text(SITE_CSV, encoding="utf-8")
    return path


def test_local_list_show_prints_the_stored_list(
    store_config: Path, site_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show of a new store prints the header only; after an import, every entry as CSV,
    sorted, as the store holds it; export - prints the same."""
    assert main(["local-list", "show", "--config", str(store_config)]) == EXIT_OK
    assert capsys.readouterr() == ("id_tag,status,expiry,parent_id_tag\n", "")
    assert main(["local-list", "import", str(site_csv), "--config", str(store_config)]) == EXIT_OK
    assert capsys.readouterr() == (f"imported 3 entries from {site_csv}\n", "")
    assert main(["local-list", "show", "--config", str(store_config)]) == EXIT_OK
    assert capsys.readouterr() == (SITE_SHOWN, "")
    assert main(["local-list", "export", "--config", str(store_config)]) == EXIT_OK
    assert capsys.readouterr() == (SITE_SHOWN, "")


def test_local_list_import_into_a_busy_store_is_one_line_and_imports_nothing(
    tmp_path: Path, store_config: Path, site_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds the store's write lock past busy_timeout: exit 1, one line
    on stderr naming the store and the lock, and the site list as it was."""
    assert main(["local-list", "import", str(site_csv), "--config", str(store_config)]) == EXIT_OK
    other = tmp_path / "other.csv"
    other.write_text("id_tag,status,expiry,parent_id_tag\nNEW-1,Accepted,,\n", encoding="utf-8")
    capsys.readouterr()
    holder = sqlite3.connect(tmp_path / "lc.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        code = main(["local-list", "import", str(other), "--config", str(store_config)])
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert code == EXIT_FAILURE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"ocpp-lc: cannot import {other}: ")
    assert f"the store at {tmp_path / 'lc.sqlite3'} failed" in err
    assert "database is locked" in err and "store.busy_timeout_ms = 100" in err
    assert err.endswith("; nothing imported\n")
    assert main(["local-list", "show", "--config", str(store_config)]) == EXIT_OK
    assert capsys.readouterr().out == SITE_SHOWN


def _store_is_a_directory(path: Path) -> None:
    path.mkdir(parents=True)


def _store_is_not_sqlite(path: Path) -> None:
    path.parent.mkdir()
    path.write_text("this is not a SQLite database\n" * 100, encoding="utf-8")


def _store_under_a_file(path: Path) -> None:
    path.parent.write_text("a file where the store's directory should be\n", encoding="utf-8")


@pytest.mark.parametrize(
    "spoil",
    [_store_is_a_directory, _store_is_not_sqlite, _store_under_a_file],
    ids=["directory", "not-sqlite", "under-a-file"],
)
@pytest.mark.parametrize("command", ["import", "show", "export"])
def test_local_list_commands_report_a_store_they_cannot_use(
    tmp_path: Path,
    site_csv: Path,
    capsys: pytest.CaptureFixture[str],
    spoil: Callable[[Path], None],
    command: str,
) -> None:
    """A store path that cannot be opened: exit 1 with one line on stderr naming the
    store, no traceback, nothing on stdout, no file written."""
    store = tmp_path / "data" / "lc.sqlite3"
    spoil(store)
    config = tmp_path / "site.toml"
    config.write_text(f'[store]\npath = "{store}"\n', encoding="utf-8")
    exported = tmp_path / "out.csv"
    argv = {
        "import": ["local-list", "import", str(site_csv)],
        "show": ["local-list", "show"],
        "export": ["local-list", "export", str(exported)],
    }[command]
    assert main([*argv, "--config", str(config)]) == EXIT_FAILURE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("ocpp-lc: cannot ")
    assert f"the store at {store} failed: " in err
    assert not exported.exists()


@pytest.mark.parametrize(
    "spoil",
    [_store_is_a_directory, _store_is_not_sqlite, _store_under_a_file],
    ids=["directory", "not-sqlite", "under-a-file"],
)
@pytest.mark.parametrize(
    "argv",
    [["show"], ["dead-letters"], ["retry", "--all"], ["drop", "--all"]],
    ids=["show", "dead-letters", "retry", "drop"],
)
def test_outbox_commands_report_a_store_they_cannot_use(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spoil: Callable[[Path], None],
    argv: list[str],
) -> None:
    """A store path that cannot be opened: exit 1 with one line on stderr naming the
    store, no traceback, nothing on stdout."""
    store = tmp_path / "data" / "lc.sqlite3"
    spoil(store)
    config = tmp_path / "site.toml"
    config.write_text(f'[store]\npath = "{store}"\n', encoding="utf-8")
    assert main(["outbox", *argv, "--config", str(config)]) == EXIT_FAILURE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"ocpp-lc: outbox {argv[0]}: the store at {store} failed: ")


def test_local_list_export_to_a_file_it_cannot_write(
    tmp_path: Path, store_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export FILE into a directory that does not exist: exit 1 and one line."""
    target = tmp_path / "nowhere" / "out.csv"
    code = main(["local-list", "export", str(target), "--config", str(store_config)])
    assert code == EXIT_FAILURE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ocpp-lc: cannot write {target}: ") and err.count("\n") == 1


def test_local_list_import_of_a_file_that_is_not_utf8(
    tmp_path: Path, store_config: Path, site_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Latin-1 byte on line 3: exit 1, the line number, and the site list unchanged."""
    assert main(["local-list", "import", str(site_csv), "--config", str(store_config)]) == EXIT_OK
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id_tag,status,expiry,parent_id_tag\nA-1,,,\nCAF\xc9-2,,,\n")
    capsys.readouterr()
    assert main(["local-list", "import", str(latin), "--config", str(store_config)]) == 1
    assert capsys.readouterr() == (
        "",
        f"ocpp-lc: {latin}: line 3: not UTF-8 text; nothing imported\n",
    )
    assert main(["local-list", "show", "--config", str(store_config)]) == EXIT_OK
    assert capsys.readouterr().out == SITE_SHOWN
