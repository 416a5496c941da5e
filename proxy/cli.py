"""The command line: ``ocpp-lc <command> [--config FILE] ...``.

Exit codes: 0 success; 1 runtime failure; 2 usage error or invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from config.settings import Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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
    return p


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
    try:
        if args.command == "check-config":
            path = args.file or args.config
            if path is None:
                print("ocpp-lc check-config: a settings FILE is required", file=sys.stderr)
                return EXIT_USAGE
            load_settings(path)
            print(f"{path}: ok")
            return EXIT_OK
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"ocpp-lc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from config.logging import setup_logging

    setup_logging(settings.log)
    try:
        _run_loop(settings)
    except OSError as exc:
        print(f"ocpp-lc: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
