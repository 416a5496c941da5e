"""Tests of config.settings: defaults, the TOML file, OCPP_LC_* variables and readable errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.settings import ENV_PREFIX, Settings, SettingsError, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "examples" / "site.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OCPP_LC_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    """A settings file with ``text`` in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    """With no file and no variables every setting has its documented default."""
    s = load_settings()
    assert isinstance(s, Settings)
    assert (s.listen.host, s.listen.port, s.listen.max_queued_calls) == ("0.0.0.0", 9000, 10)
    assert s.csms.url == "ws://127.0.0.1:9100/ocpp"
    assert s.csms.call_timeout == 30.0
    assert s.csms.compression is False and s.listen.compression is True
    assert s.store.path == Path("data/ocpp-lc.sqlite3")
    assert (s.admin.host, s.admin.port, s.admin.token) == ("127.0.0.1", 9200, None)
    assert (s.log.level, s.log.format) == ("INFO", "auto")
    assert (s.offline.mode, s.offline.unknown_charger) == ("serve", "accept")
    assert s.runtime.loop == "auto"


def test_example_file_is_valid_and_matches_the_defaults() -> None:
    """The shipped site.toml loads, and its values are the defaults it claims to show."""
    from_file = load_settings(EXAMPLE).model_dump()
    defaults = load_settings().model_dump()
    for section in ("listen", "store", "admin", "log", "offline", "runtime"):
        assert from_file[section] == defaults[section], section


def test_toml_values_are_used(tmp_path: Path) -> None:
    """Values from the TOML file replace the defaults; the others keep theirs."""
    path = write(
        tmp_path,
        '[listen]\nhost = "10.0.0.1"\nport = 9001\n\n'
        '[csms]\nurl = "wss://csms.example/ocpp"\ncall_timeout = 12.5\n\n'
        '[offline]\nmode = "strict"\n',
    )
    s = load_settings(path)
    assert (s.listen.host, s.listen.port) == ("10.0.0.1", 9001)
    assert s.listen.open_timeout == 10.0
    assert (s.csms.url, s.csms.call_timeout) == ("wss://csms.example/ocpp", 12.5)
    assert s.offline.mode == "strict"


def test_path_may_be_a_string(tmp_path: Path) -> None:
    """load_settings() accepts the path as a string, as the command line gives it."""
    assert load_settings(str(write(tmp_path, "[listen]\nport = 9005\n"))).listen.port == 9005


def test_environment_overrides_the_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OCPP_LC_LISTEN__PORT wins over listen.port from the file."""
    path = write(tmp_path, "[listen]\nport = 9001\n")
    monkeypatch.setenv("OCPP_LC_LISTEN__PORT", "9100")
    assert load_settings(path).listen.port == 9100


def test_environment_and_toml_merge_per_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable for one key of a section keeps the file's other keys of that section."""
    path = write(tmp_path, '[listen]\nhost = "10.0.0.1"\nport = 9001\nmax_queued_calls = 3\n')
    monkeypatch.setenv("OCPP_LC_LISTEN__PORT", "9100")
    monkeypatch.setenv("OCPP_LC_CSMS__URL", "wss://other.example/ocpp/")
    s = load_settings(path)
    assert (s.listen.host, s.listen.port, s.listen.max_queued_calls) == ("10.0.0.1", 9100, 3)
    assert s.csms.url == "wss://other.example/ocpp"


def test_environment_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables apply with no file at all, converted to the field's type."""
    monkeypatch.setenv("OCPP_LC_ADMIN__PORT", "9300")
    monkeypatch.setenv("OCPP_LC_LISTEN__COMPRESSION", "false")
    s = load_settings()
    assert s.admin.port == 9300
    assert s.listen.compression is False


def test_keyword_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword arguments (tests) are the highest source."""
    monkeypatch.setenv("OCPP_LC_LISTEN__PORT", "9100")
    assert load_settings(listen={"port": 0}).listen.port == 0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[listen]\nportt = 9001\n", "listen.portt"),
        ("foo = 1\n", "foo"),
        ("[nosuch]\nx = 1\n", "nosuch"),
    ],
)
def test_unknown_key_in_the_file_is_named(tmp_path: Path, text: str, key: str) -> None:
    """An unknown key is an error that names it (a typo is never silently ignored)."""
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    assert f"{key}: unknown setting" in message
    assert "\n" not in message


def test_unknown_nested_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """OCPP_LC_LISTEN__FOO names a key listen does not have: an error naming listen.foo."""
    monkeypatch.setenv("OCPP_LC_LISTEN__FOO", "1")
    with pytest.raises(SettingsError, match=r"listen\.foo: unknown setting"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[listen]\nport = "abc"\n', "listen.port"),
        ("[listen]\nport = 70000\n", "listen.port"),
        ("[csms]\ncall_timeout = 0\n", "csms.call_timeout"),
        ('[offline]\nmode = "maybe"\n', "offline.mode"),
        ("[store]\nbusy_timeout_ms = -1\n", "store.busy_timeout_ms"),
        ('listen = "x"\n', "listen"),
    ],
)
def test_bad_value_in_the_file_names_the_key_path(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type or out of range is an error naming section.key."""
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    message = str(info.value)
    assert f"{key}:" in message
    assert str(path) in message
    assert "\n" not in message


def test_bad_value_in_the_environment_names_the_key_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad OCPP_LC_* value is an error naming the key path."""
    monkeypatch.setenv("OCPP_LC_LISTEN__PORT", "x")
    with pytest.raises(SettingsError, match=r"listen\.port:"):
        load_settings()


def test_errors_do_not_echo_secret_values(tmp_path: Path) -> None:
    """The error message names the key, never the rejected value of a secret."""
    path = write(tmp_path, '[admin]\ntoken = ["s3cr3t-value"]\n')
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert "admin.token" in str(info.value)
    assert "s3cr3t-value" not in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A settings file that does not exist is a SettingsError naming it."""
    path = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(path)


def test_directory_is_not_a_settings_file(tmp_path: Path) -> None:
    """A directory given as the settings file is a SettingsError."""
    with pytest.raises(SettingsError, match="not a file"):
        load_settings(tmp_path)


@pytest.mark.parametrize(
    "text", ["[listen\n", "port = \n", "[listen]\nport = 1\nport = 2\n", "x = 'unterminated\n"]
)
def test_invalid_toml_is_an_error(tmp_path: Path, text: str) -> None:
    """A file that is not valid TOML is a SettingsError with one line, naming the file."""
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "cannot be read" in str(info.value)
    assert "\n" not in str(info.value)


def test_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    """A file with bytes that are not UTF-8 is a SettingsError, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[listen]\nhost = "caf\xe9"\n')
    with pytest.raises(SettingsError):
        load_settings(path)


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("ws://csms.example/ocpp", "ws://csms.example/ocpp"),
        ("wss://csms.example/ocpp/", "wss://csms.example/ocpp"),
        ("wss://csms.example:8443/ocpp//", "wss://csms.example:8443/ocpp"),
    ],
)
def test_csms_url_is_ws_or_wss_without_trailing_slash(url: str, kept: str) -> None:
    """csms.url keeps ws:// or wss:// URLs, with trailing slashes removed."""
    assert load_settings(csms={"url": url}).csms.url == kept


@pytest.mark.parametrize(
    "url", ["http://csms.example/ocpp", "https://csms.example/ocpp", "csms.example/ocpp", ""]
)
def test_csms_url_must_be_a_websocket_url(url: str) -> None:
    """csms.url with another scheme is an error naming csms.url."""
    with pytest.raises(SettingsError, match=r"csms\.url: .*ws:// or wss://"):
        load_settings(csms={"url": url})


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_log_level_is_case_insensitive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, level: str
) -> None:
    """log.level accepts any case, from the file or the environment."""
    assert load_settings(write(tmp_path, f'[log]\nlevel = "{given}"\n')).log.level == level
    monkeypatch.setenv("OCPP_LC_LOG__LEVEL", given)
    assert load_settings().log.level == level


def test_unknown_log_level_is_an_error() -> None:
    """log.level outside DEBUG/INFO/WARNING/ERROR is an error naming log.level."""
    with pytest.raises(SettingsError, match=r"log\.level:"):
        load_settings(log={"level": "verbose"})


def test_settings_are_frozen() -> None:
    """The settings object is validated once and cannot be changed afterwards."""
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.listen.port = 1  # type: ignore[misc]


def test_file_choice_does_not_leak_into_later_loads(tmp_path: Path) -> None:
    """A load with a file does not change what a later load without a file returns."""
    load_settings(write(tmp_path, "[listen]\nport = 9001\n"))
    assert load_settings().listen.port == 9000
    assert Settings().listen.port == 9000
