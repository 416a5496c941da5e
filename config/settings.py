"""The settings model: one object, loaded and validated once at start-up.

Sources, highest first: keyword arguments (tests), environment variables
(``OCPP_LC_`` prefix, ``__`` between nesting levels, e.g. ``OCPP_LC_LISTEN__PORT``),
the TOML file given with ``--config``, then the defaults below.

A wrong setting raises :class:`SettingsError` with one readable message.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "OCPP_LC_"

_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "ocpp_lc_toml_file", default=None
)


class SettingsError(Exception):
    """A settings file or variable is missing, unreadable or invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSettings(_Section):
    """The charger-facing WebSocket server."""

    #: Address the charger server listens on (all interfaces by default).
    host: str = "0.0.0.0"  # noqa: S104 - chargers reach the controller over the site LAN
    #: TCP port chargers connect to (0: any free port).
    port: int = Field(default=9000, ge=0, le=65535)
    #: Seconds allowed for a charger's opening handshake (slowloris guard).
    open_timeout: float = Field(default=10.0, gt=0)
    #: WebSocket ping period towards chargers in seconds; 0 disables pings.
    ping_interval: float = Field(default=30.0, ge=0)
    #: Seconds a ping may stay unanswered before the charger's connection is closed.
    ping_timeout: float = Field(default=30.0, gt=0)
    #: Largest frame accepted from a charger, in bytes, after decompression.
    max_message_size: int = Field(default=1024 * 1024, ge=1024)
    #: Offer permessage-deflate to chargers that ask for it (OCPP 2.0.1 Part 4 §3.3).
    compression: bool = True
    #: Calls a charger may send while one is still unanswered before it gets GenericError.
    max_queued_calls: int = Field(default=10, ge=0)
    #: Frames a charger may send per minute that are not OCPP-J at all (not JSON, not
    #: an array, binary) before it is closed with 1003; each still gets its CALLERROR.
    max_bad_frames_per_minute: int = Field(default=60, ge=1)
    #: OCPP security profile: 0 none, 1 Basic over ws, 2 TLS + Basic, 3 mutual TLS.
    security_profile: Literal[0, 1, 2, 3] = 0
    #: The controller's certificate chain (PEM) for profiles 2 and 3.
    tls_cert: Path | None = None
    #: The private key (PEM) of ``tls_cert``.
    tls_key: Path | None = None
    #: CA bundle (PEM) that charger certificates must chain to (profile 3).
    client_ca: Path | None = None
    #: Profile 3: the client certificate's CN must equal the identity (``identity``), or
    #: contain the serial number the charger reports in its BootNotification (``serial``).
    cn_match: Literal["identity", "serial"] = "identity"
    #: Profile 3: when set, the client certificate's organisation (O) must be this, the
    #: operator's (CPO) name (A00.FR.4xx); unset: not checked.
    client_org: str | None = None
    #: Connections open at once from one IP address (0: no limit).
    max_connections_per_ip: int = Field(default=1000, ge=0)
    #: Seconds before a refused login is answered (401), to slow down guessing.
    auth_failure_delay: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _tls_files(self) -> ListenSettings:
        if self.security_profile >= 2 and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("security_profile 2 and 3 need tls_cert and tls_key")
        if self.security_profile == 3 and self.client_ca is None:
            raise ValueError("security_profile 3 needs client_ca")
        return self


class CsmsSettings(_Section):
    """The uplink: one connection per charger to ``<url>/<identity>``."""

    #: The CSMS's OCPP-J base URL (``ws://`` or ``wss://``); each charger's uplink goes to
    #: ``<url>/<identity>``.
    url: str = "ws://127.0.0.1:9100/ocpp"
    #: Seconds allowed for an uplink's opening handshake.
    open_timeout: float = Field(default=10.0, gt=0)
    #: WebSocket ping period towards the CSMS in seconds; 0 disables pings.
    ping_interval: float = Field(default=30.0, ge=0)
    #: Seconds a ping may stay unanswered before the uplink counts as lost.
    ping_timeout: float = Field(default=30.0, gt=0)
    #: Largest frame accepted from the CSMS, in bytes, after decompression.
    max_message_size: int = Field(default=1024 * 1024, ge=1024)
    #: Pass the charger's Authorization header on to the CSMS.
    pass_authorization: bool = True
    #: Negotiate permessage-deflate with the CSMS (costs CPU on both sides).
    compression: bool = False
    #: Seconds the controller waits for the CSMS to answer a call it forwarded; past it
    #: the charger is answered locally and the uplink replaced. Keep it below the
    #: chargers' own message timeout.
    call_timeout: float = Field(default=30.0, gt=0)
    #: CA bundle (PEM) the CSMS certificate is verified against (wss://); default: the
    #: system's trust store.
    ca_bundle: Path | None = None
    #: The controller's own client certificate (PEM) for a profile 3 CSMS.
    client_cert: Path | None = None
    #: The private key (PEM) of ``client_cert``.
    client_key: Path | None = None

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return v.rstrip("/")


class UplinkSettings(_Section):
    """How lost uplinks come back."""

    #: Uplinks the controller opens per second at most, site-wide (no stampede); a
    #: charger whose turn is more than 2 s away is served offline until its uplink opens.
    max_connects_per_second: float = Field(default=100.0, gt=0)
    #: Seconds before a lost uplink's first reconnect attempt; the wait doubles after
    #: each failed attempt ...
    reconnect_min: float = Field(default=1.0, gt=0)
    #: ... up to this many seconds ...
    reconnect_max: float = Field(default=60.0, gt=0)
    #: ... plus up to this many seconds at random, so that uplinks do not retry in step.
    reconnect_jitter: float = Field(default=2.0, ge=0)
    #: While no uplink gets through, the site still tries the CSMS this often (seconds),
    #: with the uplink that has waited longest (at least reconnect_min): the CSMS is
    #: noticed back within about this long, whatever each uplink's back-off has grown
    #: to. 0 turns it off.
    probe_interval: float = Field(default=0.5, ge=0)


class StoreSettings(_Section):
    """The embedded SQLite store."""

    #: The SQLite file (WAL: its ``-wal`` and ``-shm`` files lie beside it); keep it on a
    #: local disk.
    path: Path = Path("data/ocpp-lc.sqlite3")
    #: Milliseconds a writer waits for a lock before the call gets InternalError.
    busy_timeout_ms: int = Field(default=2000, ge=0)


class AdminSettings(_Section):
    """The admin HTTP server: health, readiness, API, metrics."""

    #: Address the admin server listens on; any address but loopback requires ``token``.
    host: str = "127.0.0.1"
    #: TCP port of the admin server (0: any free port).
    port: int = Field(default=9200, ge=0, le=65535)
    #: The admin API's token: ``Authorization: Bearer <token>``, or the password of HTTP
    #: Basic; required when ``host`` is not loopback.
    token: SecretStr | None = None


class LogSettings(_Section):
    #: The lowest level logged (case-insensitive).
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``auto``: JSON lines unless standard error is a terminal.
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class OfflineSettings(_Section):
    """What the controller does while a charger's uplink is down."""

    #: ``serve``: keep chargers connected and answer them; ``strict``: close them.
    mode: Literal["serve", "strict"] = "serve"
    #: Answer to a BootNotification from an identity never seen before.
    unknown_charger: Literal["accept", "pending", "reject"] = "accept"
    #: Heartbeat interval (s) handed out in offline BootNotification answers.
    heartbeat_interval: int = Field(default=300, ge=1)
    #: Stored messages per charger beyond which no new offline transaction is accepted
    #: (answered Invalid, stored all the same); running ones go on, nothing is dropped.
    max_outbox_per_charger: int = Field(default=100_000, ge=1)


class PolicySettings(_Section):
    """Site-wide authorization policy while offline (per-charger overrides come later)."""

    #: Accept an idTag no list or cache knows while offline (AllowOfflineTxForUnknownId).
    allow_offline_tx_for_unknown_id: bool = False
    #: Refuse a start (ConcurrentTx) for an idTag already charging elsewhere on the site.
    concurrent_tx: bool = True
    #: A transaction started offline whose id the CSMS refuses on replay: stop it with
    #: reason DeAuthorized (StopTransactionOnInvalidId) ...
    stop_transaction_on_invalid_id: bool = True
    #: ... or else let it go on until this many Wh have been delivered since its start,
    #: then suspend energy with a 0 limit (MaxEnergyOnInvalidId).
    max_energy_on_invalid_id: int = Field(default=0, ge=0)
    #: Transmissions of a stored message the CSMS answers with a CALLERROR (or not at
    #: all) before it becomes a dead letter (TransactionMessageAttempts).
    transaction_message_attempts: int = Field(default=3, ge=1)
    #: Seconds; the wait before retry n is this times n (TransactionMessageRetryInterval).
    transaction_message_retry_interval: float = Field(default=60.0, ge=0)
    #: First provisional OCPP 1.6 transactionId handed out offline (a reserved range).
    provisional_tx_id_start: int = Field(default=2_000_000_000, ge=1, le=2**31 - 1)


class ReplaySettings(_Section):
    """Delivery of stored messages once the uplink is back (OCPP 1.6 §3.7.1)."""

    #: Longest wait (s) before a BootNotification answered Pending/Rejected is replayed.
    boot_retry_max: float = Field(default=60.0, gt=0)
    #: Set ``offline: true`` on replayed OCPP 2.0.1 TransactionEvents that happened while
    #: the uplink was down (E04.FR.01); off: replay them exactly as received.
    mark_offline: bool = True
    #: Days a transaction id mapping is kept after its StopTransaction was delivered.
    mapping_grace_days: float = Field(default=7.0, ge=0)


class ChargerPolicySettings(_Section):
    """A charger's overrides of the site policy (``[chargers.<identity>.policy]``)."""

    #: This charger's ``policy.stop_transaction_on_invalid_id`` (unset: the site's).
    stop_transaction_on_invalid_id: bool | None = None
    #: This charger's ``policy.max_energy_on_invalid_id`` (unset: the site's).
    max_energy_on_invalid_id: int | None = Field(default=None, ge=0)
    #: This charger's ``policy.transaction_message_attempts`` (unset: the site's).
    transaction_message_attempts: int | None = Field(default=None, ge=1)
    #: This charger's ``policy.transaction_message_retry_interval`` (unset: the site's).
    transaction_message_retry_interval: float | None = Field(default=None, ge=0)


class ChargerSettings(_Section):
    """One charger's registration (``[chargers.<identity>]``) and policy overrides."""

    #: Basic-auth password (profiles 1 and 2); kept only as a salted hash once loaded.
    password: SecretStr | None = None
    #: Basic-auth password the controller sends upstream for this charger (instead of
    #: passing the charger's own header through).
    csms_password: SecretStr | None = None
    policy: ChargerPolicySettings = ChargerPolicySettings()


class AdmissionSettings(_Section):
    """Which chargers may connect."""

    #: An identity not registered under ``[chargers.<identity>]`` (nor accepted by the
    #: CSMS before): ``refuse`` (HTTP 404) or ``pass_through`` (the CSMS decides; while
    #: the uplink is down, ``[offline] unknown_charger`` does).
    unknown_identities: Literal["refuse", "pass_through"] = "refuse"
    #: Keep a salted hash of a charger's Basic credentials once the CSMS accepted them,
    #: so the charger is admitted while the uplink is down.
    learn_credentials: bool = True


class LocalListSettings(_Section):
    """The operator's site local list."""

    #: A CSV file (id_tag,status,expiry,parent_id_tag) imported at start-up when set.
    path: Path | None = None


class RuntimeSettings(_Section):
    #: ``uvloop`` when installed (lower latency), else ``asyncio``.
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    #: Seconds closing the chargers (1001) may take on SIGTERM before the store is closed
    #: regardless.
    shutdown_grace: float = Field(default=5.0, ge=0)
    #: Seconds between moves of the long-lived objects (connected sessions) out of the
    #: garbage collector's full collections (a young collection, then ``gc.freeze()``),
    #: so that no collection walks thousands of sessions; 0 turns it off.
    gc_freeze_interval: float = Field(default=30.0, ge=0)
    #: Hours between full collections of everything, frozen objects included, which
    #: reclaims reference cycles left by closed sessions (one pause of about 0.15 ms
    #: per connected charger); 0: never.
    gc_full_collection_hours: float = Field(default=24.0, ge=0)


class Settings(BaseSettings):
    """Every setting of the controller."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: ListenSettings = ListenSettings()
    csms: CsmsSettings = CsmsSettings()
    uplink: UplinkSettings = UplinkSettings()
    store: StoreSettings = StoreSettings()
    admin: AdminSettings = AdminSettings()
    log: LogSettings = LogSettings()
    offline: OfflineSettings = OfflineSettings()
    policy: PolicySettings = PolicySettings()
    local_list: LocalListSettings = LocalListSettings()
    replay: ReplaySettings = ReplaySettings()
    admission: AdmissionSettings = AdmissionSettings()
    #: ``[chargers.<identity>]``: per-charger registration and policy overrides.
    chargers: dict[str, ChargerSettings] = Field(default_factory=dict)
    runtime: RuntimeSettings = RuntimeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def charger_policy(settings: Settings, identity: str) -> tuple[bool, int, int, float]:
    """The effective (stop_on_invalid_id, max_energy_on_invalid_id Wh,
    transaction_message_attempts, transaction_message_retry_interval) of a charger."""
    charger = settings.chargers.get(identity)
    own = charger.policy if charger is not None else ChargerPolicySettings()
    site = settings.policy

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return (
        pick(own.stop_transaction_on_invalid_id, site.stop_transaction_on_invalid_id),
        pick(own.max_energy_on_invalid_id, site.max_energy_on_invalid_id),
        pick(own.transaction_message_attempts, site.transaction_message_attempts),
        pick(own.transaction_message_retry_interval, site.transaction_message_retry_interval),
    )


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (TOML), the environment and ``overrides``.

    Raises :class:`SettingsError` with one readable line on any problem.
    """
    toml_path: Path | None = None
    if path is not None:
        toml_path = Path(path)
        if not toml_path.is_file():
            raise SettingsError(f"settings file {toml_path} does not exist or is not a file")
        try:
            import tomllib

            with toml_path.open("rb") as f:
                tomllib.load(f)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"settings file {toml_path} cannot be read: {exc}") from exc
    token = _toml_file.set(toml_path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = f" in {toml_path} or {ENV_PREFIX}* variables" if toml_path else ""
        raise SettingsError(f"invalid settings{where}: {_describe(exc)}") from None
    finally:
        _toml_file.reset(token)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    return data
