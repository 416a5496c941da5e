"""The offline responder's quick schema check agrees with the reference validator.

The compiled validator (``proxy.offline._fast_validator``) only decides that a request is
valid; anything it finds invalid goes to the interpreted validator of the ``ocpp``
package, which names the violation. So the one thing that must never happen is the
quick check passing a request the reference refuses. Requests are generated from each
schema: mostly well-formed, with wrong types, missing and extra fields, values out of
range and strings over their length mixed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ocpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.messages import get_validator

from proxy import frames
from proxy.offline import OCPP16, OCPP201, _fast_validator, schema_problem
from proxy.versions import dialect_for

_SCHEMAS = Path(ocpp.__file__).parent


# the calls a charger makes, which the offline responder checks
CASES = [("1.6", a) for a in sorted(OCPP16)] + [("2.0.1", a) for a in sorted(OCPP201)]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


def _schema(version: str, action: str) -> dict[str, Any]:
    folder = "v" + version.replace(".", "")
    name = action if version == "1.6" else f"{action}Request"
    loaded: dict[str, Any] = json.loads(
        (_SCHEMAS / folder / "schemas" / f"{name}.json").read_text(encoding="utf-8-sig")
    )
    return loaded


def _value(
    node: dict[str, Any], root: dict[str, Any], depth: int, noisy: bool
) -> st.SearchStrategy[Any]:
    """Values for a schema node: what it asks for, and (``noisy``) now and then not."""
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    wrong = SCALARS
    if "enum" in node:
        return _mostly(st.sampled_from(node["enum"]), wrong, noisy)
    kind = node.get("type")
    right: st.SearchStrategy[Any]
    if kind == "object" and depth < 8:
        props = node.get("properties", {})
        required = set(node.get("required", []))
        fields = {k: _value(v, root, depth + 1, noisy) for k, v in props.items()}
        right = st.builds(
            _object,
            st.fixed_dictionaries(
                {k: s for k, s in fields.items() if k in required},
                optional={k: s for k, s in fields.items() if k not in required},
            ),
            st.sampled_from(sorted(required) or [""]),
            st.integers(0, 9) if noisy else st.just(9),
        )
    elif kind == "array" and depth < 8:
        items = node.get("items", {})
        inner = _value(items, root, depth + 1, noisy) if isinstance(items, dict) else SCALARS
        low = node.get("minItems", 0)
        right = st.lists(inner, min_size=low, max_size=max(low, min(node.get("maxItems", 3), 3)))
    elif kind == "string":
        limit = node.get("maxLength", 20)
        right = st.text(min_size=0, max_size=limit + 2 if noisy else limit)
    elif kind == "integer":
        odd = st.sampled_from([1.0, 2.5, True])
        right = st.one_of(st.integers(-3, 1000), odd) if noisy else st.integers(0, 1000)
    elif kind == "number":
        right = st.one_of(st.integers(-3, 1000), st.floats(-10, 1e6))
    elif kind == "boolean":
        right = st.booleans()
    else:
        right = SCALARS
    return _mostly(right, wrong, noisy)


def _mostly(
    right: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any], noisy: bool
) -> st.SearchStrategy[Any]:
    """``right``, or (``noisy``) ``wrong`` one time in eight."""
    if not noisy:
        return right
    return st.integers(0, 7).flatmap(lambda roll: wrong if roll == 0 else right)


def _object(base: dict[str, Any], dropped: str, roll: int) -> dict[str, Any]:
    """Sometimes a required field missing, sometimes an extra one."""
    out = dict(base)
    if roll == 0 and dropped:
        out.pop(dropped, None)
    elif roll == 1:
        out["vendorExtra"] = "x"
    return out


@pytest.mark.parametrize(("version", "action"), CASES, ids=[f"{v}-{a}" for v, a in CASES])
def test_the_quick_check_never_passes_what_the_reference_refuses(version: str, action: str) -> None:
    schema = _schema(version, action)
    quick = _fast_validator(version, action)
    assert quick is not None
    reference = get_validator(frames.CALL, action, version)
    draft4 = "draft-04" in schema.get("$schema", "draft-04")
    seen = {True: 0, False: 0}

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(_value(schema, schema, 0, False), _value(schema, schema, 0, True)))
    def check(payload: Any) -> None:
        ok = quick(payload)
        seen[ok] += 1
        if not ok:
            return
        errors = list(reference.iter_errors(payload))
        if not draft4:
            # draft-06 counts 1.0 as an integer; the draft-4 reference does not
            errors = [
                e for e in errors if not (e.validator == "type" and _integral_float(e.instance))
            ]
        assert errors == [], (payload, [e.message for e in errors])

    check()
    assert seen[True] > 0, "no generated request was valid: the generator is off"
    assert seen[False] > 0, "no generated request was invalid: the generator is off"


METER = [{"timestamp": "2026-12-02T10:00:00Z", "sampledValue": [{"value": "12.5"}]}]


def _integral_float(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


@pytest.mark.parametrize(
    ("subprotocol", "action", "payload", "kind"),
    [
        ("ocpp1.6", "MeterValues", {"meterValue": METER}, "OCCURRENCE"),
        ("ocpp1.6", "MeterValues", {"connectorId": "1", "meterValue": METER}, "TYPE"),
        (
            "ocpp1.6",
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Lost"},
            "PROPERTY",
        ),
        # a transaction message off form where the controller does not read: kept (B10)
        ("ocpp1.6", "MeterValues", {"connectorId": 1, "meterValue": []}, None),
        (
            "ocpp1.6",
            "StopTransaction",
            {"transactionId": 7, "meterStop": 1, "timestamp": "x", "reason": "Exploded"},
            None,
        ),
        ("ocpp1.6", "StopTransaction", {"transactionId": 7, "meterStop": 1}, "OCCURRENCE"),
        (
            "ocpp1.6",
            "StopTransaction",
            {"transactionId": 7.5, "meterStop": 1, "timestamp": "x"},
            "TYPE",
        ),
        ("ocpp1.6", "StartTransaction", {"connectorId": 1, "idTag": "A"}, "OCCURRENCE"),
        ("ocpp2.0.1", "MeterValues", {"evseId": 1, "meterValue": []}, "PROPERTY"),
        ("ocpp1.6", "MeterValues", {"connectorId": 1.0, "meterValue": METER}, "TYPE"),
        ("ocpp1.6", "MeterValues", {"connectorId": 1, "meterValue": METER, "x": 1}, None),
        ("ocpp1.6", "Authorize", {"idTag": "A" * 30}, None),
        ("ocpp2.0.1", "Heartbeat", {}, None),
        ("ocpp2.0.1", "StatusNotification", {"evseId": 1}, "OCCURRENCE"),
    ],
)
def test_schema_problem_names_the_violation(
    subprotocol: str, action: str, payload: dict[str, Any], kind: str | None
) -> None:
    problem = schema_problem(dialect_for(subprotocol), action, payload)
    assert (problem[0].name if problem else None) == kind
