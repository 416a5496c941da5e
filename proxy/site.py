"""What the controller knows about the site, and how it learns it.

:class:`Site` answers "may this id charge here, now?" from the stored lists and cache
(through :func:`policies.authorization.authorize`) and learns from the exchanges that
pass through online (:class:`~proxy.router.Exchange`): idTagInfo answers feed the cache,
SendLocalList and GetLocalListVersion keep each charger's list, BootNotification answers
mark a charger as accepted, and transaction starts and stops tell which ids are
charging (site-wide ConcurrentTx).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from config.settings import PolicySettings
from policies.authorization import (
    AuthDecision,
    AuthEntry,
    AuthStatus,
    authorize,
    cache_entry_from_answer,
    should_cache,
    token_key,
)
from policies.local_list import ListUpdate, apply_update
from proxy.frames import CallResult
from proxy.metrics import Metrics
from proxy.router import Exchange, Origin
from proxy.store import Statement, Store

if TYPE_CHECKING:
    from proxy.session import Session


def _utc_now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: Any) -> datetime | None:
    """An OCPP date-time as an aware datetime (naive taken as UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def id_tag_info_entry(info: Any) -> AuthEntry | None:
    """The cache entry an idTagInfo/idTokenInfo answer describes."""
    if not isinstance(info, dict) or not isinstance(info.get("status"), str):
        return None
    parent = info.get("parentIdTag")
    if parent is None and isinstance(info.get("groupIdToken"), dict):
        parent = info["groupIdToken"].get("idToken")
    return cache_entry_from_answer(
        info["status"],
        parse_time(info.get("expiryDate") or info.get("cacheExpiryDateTime")),
        parent if isinstance(parent, str) else None,
    )


def new_password(action: str, request: dict[str, Any], result: dict[str, Any]) -> bytes | None:
    """The Basic password a CSMS set and the charger accepted, if the exchange did."""
    if action == "ChangeConfiguration":
        if request.get("key") == "AuthorizationKey" and result.get("status") == "Accepted":
            value = request.get("value")
            return value.encode() if isinstance(value, str) else None
        return None
    data = request.get("setVariableData")
    results = result.get("setVariableResult")
    if not isinstance(data, list) or not isinstance(results, list):
        return None
    for item, outcome in zip(data, results, strict=False):
        if not isinstance(item, dict) or not isinstance(outcome, dict):
            continue
        component = item.get("component") or {}
        variable = item.get("variable") or {}
        if (
            isinstance(component, dict)
            and isinstance(variable, dict)
            and component.get("name") == "SecurityCtrlr"
            and variable.get("name") == "BasicAuthPassword"
            and outcome.get("attributeStatus") == "Accepted"
            and isinstance(item.get("attributeValue"), str)
        ):
            return str(item["attributeValue"]).encode()
    return None


class Site:
    """Site-wide authorization state over the store."""

    def __init__(
        self, store: Store, policy: PolicySettings, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics if metrics is not None else Metrics()
        #: id key -> the (identity, transactionId) pairs charging with it
        self._active: dict[str, set[tuple[str, int | str]]] = {}
        self._tx_key: dict[tuple[str, int | str], str] = {}
        #: (identity, 1.6 connector) -> the transactions running on it, and back
        self._on_connector: dict[tuple[str, int], set[int | str]] = {}
        self._tx_connector: dict[tuple[str, int | str], int] = {}
        #: id key -> starts accepted offline and not recorded yet (see :meth:`starting`)
        self._starting: dict[str, int] = {}
        #: The time expiry is judged by: the offline answers' guarded clock, once the
        #: controller wires it (an edge clock reset to 1970 would accept expired ids).
        self.clock: Callable[[], datetime] = _utc_now
        #: Called when the CSMS changed a charger's Basic password and the charger
        #: accepted (AuthorizationKey / BasicAuthPassword), with the new password.
        self.on_new_password: Callable[[Session, bytes], Awaitable[None]] | None = None
        #: Called with every MeterValues that passes through (the energy-cap policy).
        self.on_meter: Callable[[Session, dict[str, Any]], Awaitable[None]] | None = None
        #: The same in two steps (the offline quick path): the reading is noted at
        #: once; a coroutine returned is what must follow (a capped transaction).
        self.on_meter_now: (
            Callable[[Session, dict[str, Any]], Coroutine[Any, Any, None] | None] | None
        ) = None
        #: Told the ``currentTime`` of each BootNotification answer passed through (the
        #: offline answers' clock guard).
        self.on_csms_time: Callable[[Any], None] | None = None

    async def load(self) -> None:
        for identity, tx_id, key, connector in await self.store.running_transactions():
            self.started(identity, tx_id, key, connector)

    # -- running transactions -------------------------------------------------------

    def started(
        self, identity: str, tx_id: int | str, key: str, connector: int | None = None
    ) -> bool:
        """The id ``key`` is charging in this transaction (on this OCPP 1.6 connector,
        where known); False if known already."""
        if self._tx_key.get((identity, tx_id)) == key:
            return False
        self._active.setdefault(key, set()).add((identity, tx_id))
        self._tx_key[(identity, tx_id)] = key
        if type(connector) is int and connector > 0:
            self._on_connector.setdefault((identity, connector), set()).add(tx_id)
            self._tx_connector[(identity, tx_id)] = connector
        return True

    def stopped(self, identity: str, tx_id: int | str) -> bool:
        """The transaction ended; False if it was not known as charging."""
        key = self._tx_key.pop((identity, tx_id), None)
        if key is None:
            return False
        holders = self._active.get(key)
        if holders is not None:
            holders.discard((identity, tx_id))
            if not holders:
                del self._active[key]
        connector = self._tx_connector.pop((identity, tx_id), None)
        if connector is not None:
            running = self._on_connector.get((identity, connector))
            if running is not None:
                running.discard(tx_id)
                if not running:
                    del self._on_connector[(identity, connector)]
        return True

    def connector_free(self, session: Session, connector: Any, why: str) -> list[Statement]:
        """An OCPP 1.6 connector is free of transactions (a new transaction starts on it,
        or it reports Available): any transaction still running on it ended without its
        StopTransaction reaching the controller (a charger that rebooted and never sent
        it). Its id is charging no more, so that ConcurrentTx does not refuse the card
        for good; the changes to store."""
        if type(connector) is not int:
            return []
        identity = session.identity
        changes: list[Statement] = []
        for tx_id in sorted(self._on_connector.get((identity, connector), ()), key=str):
            self.stopped(identity, tx_id)
            session.log.warning(
                "transaction_presumed_ended", transaction_id=tx_id, connector=connector, why=why
            )
            changes.append(self.store.online_stopped(identity, tx_id))
            if type(tx_id) is int:
                changes.append(self.store.stop_transaction(identity, tx_id))
        return changes

    async def free_connector(self, session: Session, connector: Any, why: str) -> None:
        """:meth:`connector_free`, its changes stored."""
        changes = self.connector_free(session, connector, why)
        if changes:
            await self.store.apply(*changes)

    async def connector_status(self, session: Session, connector: Any, status: Any) -> None:
        """A 1.6 StatusNotification (passing through or answered offline): Available
        means no transaction runs on the connector."""
        if status == "Available":
            await self.free_connector(session, connector, "available")

    def charging(self, key: str) -> bool:
        return bool(self._active.get(key)) or key in self._starting

    @contextlib.contextmanager
    def starting(self, key: str, decision: AuthDecision) -> Iterator[None]:
        """Hold an accepted start's id as charging until the start is recorded (or
        fails): entered right after :meth:`decide`, with no await between, two chargers
        starting the same id at once cannot both be accepted under ConcurrentTx."""
        if decision.status is not AuthStatus.Accepted:
            yield
            return
        self._starting[key] = self._starting.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._starting[key] - 1
            if left:
                self._starting[key] = left
            else:
                del self._starting[key]

    # -- decisions -----------------------------------------------------------------

    async def decide(
        self,
        identity: str,
        key: str,
        *,
        for_start: bool,
        valid: bool = True,
        site_key: str | None = None,
    ) -> AuthDecision:
        charger, site, cache = await self.store.auth_entries(identity, key, site_key)
        decision = authorize(
            key,
            now=self.clock(),
            charger_list={key: charger} if charger else {},
            site_list={key: site} if site else {},
            cache={key: cache} if cache else {},
            allow_unknown=self.policy.allow_offline_tx_for_unknown_id,
            concurrent_tx=self.policy.concurrent_tx,
            active_elsewhere=self.charging(key),
            for_start=for_start,
            valid=valid,
        )
        self.metrics.auth_decisions[decision.source.value, decision.status.value] += 1
        return decision

    # -- learning from what passes through -----------------------------------------

    async def exchange(self, session: Session, effect: Exchange) -> None:
        answer = effect.answer
        if not isinstance(answer, CallResult) or not isinstance(answer.payload, dict):
            return
        call = effect.call
        request = call.payload if isinstance(call.payload, dict) else {}
        result = answer.payload
        identity = session.identity
        action = call.action
        if effect.origin is Origin.CHARGER:
            if action == "BootNotification" and self.on_csms_time is not None:
                # the time guard needs one good reading: the monotonic clock carries
                # it forward (Heartbeats pass through unread, at no cost)
                self.on_csms_time(result.get("currentTime"))
            if action == "BootNotification":
                await self.store.record_boot(
                    identity,
                    session.subprotocol,
                    call.raw,
                    replay=False,
                    accepted=result.get("status") == "Accepted",
                    csms_status=status if isinstance(status := result.get("status"), str) else None,
                )
                return
            if action == "StatusNotification":
                connector = request.get("connectorId")
                if isinstance(connector, int):
                    await self.store.record_status(
                        identity, connector, request.get("status"), call.raw, replay=False
                    )
                    await self.connector_status(session, connector, request.get("status"))
                return
            if action == "MeterValues":
                if self.on_meter is not None:
                    await self.on_meter(session, request)
                return
            key = self._request_key(request)
            info = result.get("idTagInfo") or result.get("idTokenInfo")
            # the id's answer first: once the id is seen charging, the cache knows it
            await self.learn_answer(identity, request, result)
            changes: list[Statement] = []
            if action == "TransactionEvent":
                changes = self._learn_event(identity, request, info, key)
            elif action in ("StartTransaction", "StopTransaction"):
                changes = self._learn_transaction(session, action, request, result, key)
            if changes:
                await self.store.apply(*changes)
            if action == "TransactionEvent" and self.on_meter is not None:
                await self.on_meter(session, request)
        elif action in ("ChangeConfiguration", "SetVariables"):
            password = new_password(action, request, result)
            if password is not None and self.on_new_password is not None:
                await self.on_new_password(session, password)
        elif action == "SendLocalList" and result.get("status") == "Accepted":
            await self._learn_list(identity, request)
        elif action == "GetLocalListVersion":
            version = result.get("listVersion", result.get("versionNumber"))
            if type(version) is int:
                await self._learn_list_version(session, version)

    def _learn_transaction(
        self,
        session: Session,
        action: str,
        request: dict[str, Any],
        result: dict[str, Any],
        key: str | None,
    ) -> list[Statement]:
        """Which ids are charging, from OCPP 1.6 starts and stops passing through; the
        changes to store."""
        identity = session.identity
        if action == "StartTransaction":
            real = result.get("transactionId")
            info = result.get("idTagInfo")
            accepted = isinstance(info, dict) and info.get("status") == "Accepted"
            connector = request.get("connectorId")
            changes = self.connector_free(session, connector, "new_start")
            if (
                isinstance(real, int)
                and key is not None
                and accepted
                and self.started(identity, real, key, connector)
            ):
                changes.append(self.store.online_started(identity, real, key, connector))
            return changes
        tx_id = request.get("transactionId")
        if not isinstance(tx_id, int):
            return []
        changes = []
        if self.stopped(identity, tx_id):
            changes.append(self.store.online_stopped(identity, tx_id))
        provisional = session.router.tx_down.get(tx_id)
        if provisional is not None:
            self.stopped(identity, provisional)
            changes.append(self.store.close_transaction(identity, provisional))
        return changes

    def _learn_event(
        self, identity: str, request: dict[str, Any], info: Any, key: str | None
    ) -> list[Statement]:
        """Which ids are charging, from OCPP 2.0.1 TransactionEvents passing through;
        the changes to store."""
        tx = request.get("transactionInfo")
        tx_id = tx.get("transactionId") if isinstance(tx, dict) else None
        if not isinstance(tx_id, str):
            return []
        if request.get("eventType") == "Ended":
            if self.stopped(identity, tx_id):
                # started online, or offline and replayed: ended either way
                return [
                    self.store.online_stopped(identity, tx_id),
                    self.store.station_ended(identity, tx_id),
                ]
        elif (
            key is not None
            and isinstance(info, dict)
            and info.get("status") == "Accepted"
            and self.started(identity, tx_id, key)
        ):
            return [self.store.online_started(identity, tx_id, key)]
        return []

    @staticmethod
    def _request_key(request: dict[str, Any]) -> str | None:
        tag = request.get("idTag")
        if isinstance(tag, str):
            return token_key(tag, None)
        token = request.get("idToken")
        if isinstance(token, dict) and isinstance(token.get("idToken"), str):
            return token_key(token["idToken"], str(token.get("type")))
        return None

    @staticmethod
    def _site_key(request: dict[str, Any]) -> str | None:
        """The key of the id in the site list (bare, without a 2.0.1 token type)."""
        token = request.get("idToken")
        if isinstance(token, dict) and isinstance(token.get("idToken"), str):
            return token_key(token["idToken"], None)
        return None

    async def learn_answer(
        self, identity: str, request: dict[str, Any], result: dict[str, Any]
    ) -> None:
        """The cache learns the id's status a CSMS answer carries (idTagInfo or
        idTokenInfo), passing through or to a replayed message, unless the id is in a
        local list."""
        key = self._request_key(request)
        entry = id_tag_info_entry(result.get("idTagInfo") or result.get("idTokenInfo"))
        if key is None or entry is None:
            return
        charger, site, _ = await self.store.auth_entries(identity, key, self._site_key(request))
        if not should_cache(key, [{key: e} for e in (charger, site) if e is not None]):
            return
        await self.store.cache_put(key, entry)

    async def _learn_list_version(self, session: Session, version: int) -> None:
        """A charger's GetLocalListVersion answer: 0 (an empty list) or -1 (it keeps no
        list) empties the controller's copy; a version other than the copy's means the
        list changed where the controller did not see it (before it stood between the
        charger and the CSMS, or while it was replaced), so the copy is dropped rather
        than trusted, until the CSMS sends the list again."""
        identity = session.identity
        if version > 0:
            known = await self.store.charger_list_version(identity)
            if known == version:
                return
            session.log.warning("charger_list_out_of_sync", known_version=known, version=version)
        await self.store.save_charger_list(identity, version, {})

    async def _learn_list(self, identity: str, request: dict[str, Any]) -> None:
        version = request.get("listVersion") or request.get("versionNumber")
        update_type = request.get("updateType")
        items = request.get("localAuthorizationList") or []
        if update_type not in ("Full", "Differential") or not isinstance(items, list):
            return
        entries: list[tuple[str, AuthEntry | None]] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            key = self._request_key(item)
            if key is None:
                continue
            info = item.get("idTagInfo") or item.get("idTokenInfo")
            entries.append((key, id_tag_info_entry(info) if info is not None else None))
        current = await self.store.charger_list(identity)
        updated = apply_update(
            current,
            ListUpdate(
                version if isinstance(version, int) else 0,
                update_type,
                tuple(entries),
            ),
        )
        await self.store.save_charger_list(
            identity, version if isinstance(version, int) else None, updated
        )
