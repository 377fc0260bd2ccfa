"""Every response the simulator serves, validated against Cartesia's OpenAPI schemas.

The schemas come from tests/data/cartesia-openapi-agent-calls.yaml (an extract of Cartesia's
OpenAPI 3.0 description). OpenAPI 3.0 is turned into JSON Schema 2020-12: ``nullable: true``
becomes a type (or ``anyOf``) that allows null, and ``#/...`` references point into the whole
document, registered with ``referencing``. Validation is done twice: as the spec says (extra fields
allowed), and *strict* (every object with ``properties`` forbids undeclared ones), because the
simulator should invent no field. ``date-time`` and ``uuid`` formats are checked.

Error bodies are checked against the documented error shape (cartesia-api.md §4), since the batch
routes declare their error statuses without a schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from airflow_provider_cartesia.testing import CartesiaSimulator, Fault

SPEC_FILE = Path(__file__).parent / "data" / "cartesia-openapi-agent-calls.yaml"
SPEC_URI = "urn:cartesia:openapi-agent-calls"
BATCHES = "/agents/calls/batches"
CALLS = "/agents/calls"
NOT_SERVED = {
    "agents_create-outbound-call",
    "agents_delete-call",
    "agents_cancel-call",
    "agents_download-call-audio",
}
"""Operations of the extract the hook never calls: the simulator does not serve them."""
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

# The documented error body (cartesia-api.md §4).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error_code", "title", "message", "request_id"],
    "properties": {
        "error_code": {"type": ["string", "null"]},
        "title": {"type": "string", "minLength": 1},
        "message": {"type": "string", "minLength": 1},
        "request_id": {"type": "string", "format": "uuid"},
        "doc_url": {"type": "string"},
    },
    "additionalProperties": False,
}
# Statuses any route may answer (cartesia-api.md §2: 401 and 429), plus the simulator's 405.
GENERIC_ERROR_STATUSES = {401, 405, 429}

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def openapi_to_json_schema(node: Any, *, strict: bool) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema 2020-12 (nullable, absolute $refs, optional strictness)."""
    if isinstance(node, list):
        return [openapi_to_json_schema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: openapi_to_json_schema(value, strict=strict)
        for key, value in node.items()
        if key not in ("nullable", "example") and not key.startswith("x-")
    }
    if isinstance(out.get("$ref"), str) and out["$ref"].startswith("#"):
        out["$ref"] = SPEC_URI + out["$ref"]
    if node.get("nullable") is True:
        if "$ref" in out:
            ref = out.pop("$ref")
            out["anyOf"] = [{"$ref": ref}, {"type": "null"}]
        elif isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class Spec:
    """The OpenAPI document, converted, with a validator per (operation, status)."""

    def __init__(self, strict: bool) -> None:
        raw = yaml.safe_load(SPEC_FILE.read_text())
        self.raw = raw
        self.doc = openapi_to_json_schema(raw, strict=strict)
        self.registry: Registry = Registry().with_resource(
            SPEC_URI, Resource.from_contents(self.doc, default_specification=DRAFT202012)
        )
        # Templates with fewer parameters first, so /agents/calls/batches beats /agents/calls/{call_id}.
        self.templates = sorted(self.doc["paths"], key=lambda t: (t.count("{"), t))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template in self.templates:
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path):
                operations = self.doc["paths"][template]
                if method.lower() in operations:
                    op = operations[method.lower()]
                    return op["operationId"], op
        raise KeyError(f"no operation for {method} {path}")

    def operation_ids(self) -> set[str]:
        return {op["operationId"] for ops in self.doc["paths"].values() for op in ops.values()}

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator(schema, registry=self.registry, format_checker=FORMATS)

    def schema_for(self, operation_id: str, status: int, content_type: str = "application/json") -> dict[str, Any]:
        for ops in self.doc["paths"].values():
            for op in ops.values():
                if op["operationId"] == operation_id:
                    return op["responses"][str(status)]["content"][content_type]["schema"]
        raise KeyError(operation_id)

    def component(self, name: str) -> dict[str, Any]:
        return {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}


@cache
def spec(strict: bool) -> Spec:
    return Spec(strict)


class SpecClient:
    """Sends requests to the simulator and validates every answer against the spec."""

    def __init__(self, sim: CartesiaSimulator, version: str = "2026-03-01") -> None:
        self.sim = sim
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": version})
        self.checked: set[tuple[str, int]] = set()
        self.bodies: list[tuple[str, Any]] = []

    def call(self, method: str, path: str, status: int, *, any_route: bool = False, **kwargs: Any) -> Any:
        """Send, check the status, validate the body; ``any_route``: an error every route may give."""
        response = self.session.request(method, self.sim.url + path, timeout=5, **kwargs)
        assert response.status_code == status, response.text
        try:
            operation_id, operation = spec(False).operation(method, path)
        except KeyError:
            operation_id, operation = f"{method} {path}", {"responses": {}}
        if status >= 400:
            documented = set(map(int, operation["responses"]))
            if not any_route:
                assert status in documented | GENERIC_ERROR_STATUSES | {404}, f"{status} not documented for {method}"
            assert response.headers["Content-Type"] == "application/json"
            jsonschema.validate(response.json(), ERROR_SCHEMA, format_checker=FORMATS)
            self.checked.add((operation_id, status))
            return response.json()
        content_types = list(operation["responses"][str(status)]["content"])
        assert response.headers["Content-Type"] in content_types
        body = response.json()
        for strict in (False, True):
            spec(strict).validator(spec(strict).schema_for(operation_id, status)).validate(body)
        self.checked.add((operation_id, status))
        self.bodies.append((operation_id, body))
        return body


@pytest.fixture
def sim(cartesia_simulator: CartesiaSimulator) -> CartesiaSimulator:
    return cartesia_simulator


@pytest.fixture
def api(sim: CartesiaSimulator) -> Iterator[SpecClient]:
    client = SpecClient(sim)
    yield client
    client.session.close()


def batch_request(n: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Schema check",
        "agent_id": "agent_1",
        "from_number_id": "pn_1",
        "recipients": [{"to_number": f"+1415555{i:04d}", "metadata": {"i": i} if i % 2 else None} for i in range(n)],
        **extra,
    }


# -- the validator itself ---------------------------------------------------------------------------


def test_the_spec_file_is_the_extract_we_expect():
    raw = spec(False).raw
    assert raw["openapi"].startswith("3.0")
    assert spec(False).operation_ids() == {
        "agents_list-calls",
        "agents_create-outbound-call",
        "agents_get-call",
        "agents_delete-call",
        "agents_cancel-call",
        "agents_download-call-audio",
        "agents_create-call-batch",
        "agents_list-call-batches",
        "agents_get-call-batch",
        "agents_cancel-call-batch",
        "agents_retry-call-batch",
    }


def test_the_validator_bites(sim: CartesiaSimulator, api: SpecClient):
    """Known-bad variants of real responses must fail, or the other tests prove nothing."""
    batch_id = sim.seed_batch(recipients=3, outcomes={"completed": 1.0})
    sim.clock.advance(600)
    good = api.call("GET", f"{BATCHES}/{batch_id}", 200)
    batch_schema = spec(False).schema_for("agents_get-call-batch", 200)

    def mutated(change: Any) -> dict[str, Any]:
        body = {**good, "recipients": [dict(r) for r in good["recipients"]]}
        change(body)
        return body

    bad_variants = [
        lambda b: b["recipients"][0].__setitem__("agent_call_id", None),  # optional, not nullable
        lambda b: b["recipients"][0].__setitem__("end_reason", None),
        lambda b: b["recipients"][0].__setitem__("end_reason", "hung_up"),
        lambda b: b.__setitem__("status", "running"),
        lambda b: b.pop("region"),
        lambda b: b.__setitem__("created_at", "2026-06-01 12:00"),
        lambda b: b.__setitem__("total_calls_finished", "3"),
    ]
    for change in bad_variants:
        with pytest.raises(jsonschema.ValidationError):
            spec(False).validator(batch_schema).validate(mutated(change))
    with pytest.raises(jsonschema.ValidationError):
        spec(True).validator(spec(True).schema_for("agents_get-call-batch", 200)).validate(
            mutated(lambda b: b.__setitem__("recipient_count", 3))
        )
    # and nullable fields really accept null
    call_schema = spec(False).component("AgentCall")
    spec(False).validator(call_schema).validate(
        {"id": "ac_1", "agent_id": "a", "status": "created", "end_reason": None, "telephony_params": None}
    )
    with pytest.raises(jsonschema.ValidationError):
        spec(False).validator(call_schema).validate({"id": "ac_1", "agent_id": "a", "status": "active"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"title": "x", "message": "y", "request_id": "nope"}, ERROR_SCHEMA)


# -- every operation --------------------------------------------------------------------------------


def test_every_operation_answers_per_its_schema(sim: CartesiaSimulator, api: SpecClient):
    sim.call_seconds = (40.0, 40.0)
    sim.outcomes = {"completed": 1.0}
    created = api.call("POST", BATCHES, 201, json=batch_request(4, target_concurrency_limit=2))
    batch_id = created["id"]
    api.call("GET", BATCHES, 200)
    api.call("GET", f"{BATCHES}/{batch_id}", 200)
    sim.clock.advance(2.5)
    api.call("POST", f"{BATCHES}/{batch_id}/cancel", 200)
    sim.clock.advance(600)
    retry_me = sim.seed_batch(recipients=2, outcomes={"busy": 1.0})
    sim.clock.advance(60)
    api.call("POST", f"{BATCHES}/{retry_me}/retry", 200)
    trunk = api.call("POST", BATCHES, 201, json=batch_request(1, from_number_id="pn_sip_1", region="APAC"))
    sim.clock.advance(600)
    api.call("GET", CALLS, 200, params={"batch_id": trunk["id"]})

    calls = api.call("GET", CALLS, 200, params={"batch_id": batch_id})["data"]
    call_id = calls[0]["id"]
    api.call("GET", CALLS, 200, params={"agent_id": "agent_1", "expand": "transcript"})
    api.call("GET", f"{CALLS}/{call_id}", 200)

    covered = {operation_id for operation_id, status in api.checked if status < 300}
    assert covered == spec(False).operation_ids() - NOT_SERVED


def test_a_batch_with_recipients_in_every_status(sim: CartesiaSimulator, api: SpecClient):
    kinds = ["completed", "busy", "pre_dial_failure", "completed", "no_answer", "completed"]
    running = sim.seed_batch(
        recipients=[{"to_number": f"+1415555010{i}", "outcome": kind} for i, kind in enumerate(kinds)],
        dispatch_interval=10,
        call_seconds=(20.0, 20.0),
    )
    cancelled = sim.seed_batch(recipients=10, dispatch_interval=10, call_seconds=(20.0, 20.0))
    sim.clock.advance(55)
    api.call("POST", f"{BATCHES}/{cancelled}/cancel", 200)

    seen: dict[str, dict[str, Any]] = {}
    for batch_id in (running, cancelled):
        for recipient in api.call("GET", f"{BATCHES}/{batch_id}", 200)["recipients"]:
            seen.setdefault(recipient["status"], recipient)
    assert set(seen) == {"queued", "dispatched", "started", "completed", "failed", "cancelled"}
    assert "agent_call_id" not in seen["queued"] and "agent_call_id" in seen["started"]

    pre_dial = api.call("GET", f"{BATCHES}/{running}", 200)["recipients"][2]
    assert pre_dial["status"] == "failed"
    assert "error_message" in pre_dial
    assert "agent_call_id" not in pre_dial


def test_batches_in_every_status_and_list_pages(sim: CartesiaSimulator, api: SpecClient):
    statuses = set()
    pending = sim.seed_batch(recipients=2, scheduled_at=sim.clock.now() + timedelta(hours=1))
    in_progress = sim.seed_batch(recipients=3, dispatch_interval=4)
    completed = sim.seed_batch(recipients=1)
    failed = sim.seed_batch(recipients=2, outcomes={"pre_dial_failure": 1.0})
    cancelled = sim.seed_batch(recipients=3, dispatch_interval=4)
    sim.clock.advance(5)
    api.call("POST", f"{BATCHES}/{cancelled}/cancel", 200)
    for batch_id in (pending, in_progress, completed, failed, cancelled):
        statuses.add(api.call("GET", f"{BATCHES}/{batch_id}", 200)["status"])
    assert statuses == {"pending", "in_progress", "completed", "failed", "cancelled"}

    first = api.call("GET", BATCHES, 200, params={"limit": 2})
    assert first["has_more"] is True
    middle = api.call("GET", BATCHES, 200, params={"limit": 2, "starting_after": first["next_page"]})
    last = api.call("GET", BATCHES, 200, params={"limit": 2, "starting_after": middle["next_page"]})
    assert last["has_more"] is False
    assert last["next_page"] is None
    api.call("GET", BATCHES, 200, params={"limit": 2, "ending_before": last["data"][0]["id"]})
    api.call("GET", BATCHES, 200, params={"agent_id": "agent_nobody"})
    api.call("GET", CALLS, 200, params={"batch_id": in_progress, "limit": 1})
    api.call("GET", CALLS, 200, params={"batch_id": pending})  # empty data


def test_cancelled_and_retried_batches(sim: CartesiaSimulator, api: SpecClient):
    batch_id = sim.seed_batch(
        recipients=[
            {"to_number": "+14155550001", "outcome": "no_answer", "metadata": {"x": [1, 2]}},
            {"to_number": "+14155550002", "outcome": "completed"},
            {"to_number": "+14155550003", "outcome": "pre_dial_failure"},
        ]
    )
    sim.clock.advance(600)
    retried = api.call("POST", f"{BATCHES}/{batch_id}/retry", 200)
    assert retried["retry_count"] == 1
    api.call("GET", f"{BATCHES}/{batch_id}", 200)
    sim.clock.advance(1)
    cancelled = api.call("POST", f"{BATCHES}/{batch_id}/cancel", 200)
    assert cancelled["status"] == "cancelled"
    detail = api.call("GET", f"{BATCHES}/{batch_id}", 200)
    assert {r["status"] for r in detail["recipients"]} >= {"cancelled"}
    api.call("POST", f"{BATCHES}/{batch_id}/retry", 400)
    api.call("GET", CALLS, 200, params={"batch_id": batch_id, "expand": "transcript"})


def test_calls_in_every_state_with_and_without_transcript(sim: CartesiaSimulator, api: SpecClient):
    kinds = ["completed", "error", "dial_failed", "busy", "no_answer", "completed"]
    batch_id = sim.seed_batch(
        recipients=[{"to_number": f"+1415555020{i}", "outcome": kind} for i, kind in enumerate(kinds)],
        dispatch_interval=5,
        call_seconds=(60.0, 60.0),
    )
    statuses: set[str] = set()
    for _ in range(6):
        sim.clock.advance(12)
        for expand in ({}, {"expand": "transcript"}):
            page = api.call("GET", CALLS, 200, params={"batch_id": batch_id, **expand})
            for call in page["data"]:
                statuses.add(call["status"])
                assert ("transcript" in call) is bool(expand)
                api.call("GET", f"{CALLS}/{call['id']}", 200)
    sim.clock.advance(600)
    for call in api.call("GET", CALLS, 200, params={"batch_id": batch_id, "expand": "transcript"})["data"]:
        statuses.add(call["status"])
    assert statuses == {"created", "started", "completed", "failed"}


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", BATCHES, {"json": {"name": "x"}}, 400),
        ("POST", BATCHES, {"json": batch_request(agent_id="agent_missing_1")}, 404),
        ("POST", BATCHES, {"json": batch_request(region="EU")}, 400),
        ("GET", f"{BATCHES}/acb_nope", {}, 404),
        ("POST", f"{BATCHES}/acb_nope/cancel", {}, 404),
        ("POST", f"{BATCHES}/acb_nope/retry", {}, 404),
        ("GET", CALLS, {}, 400),
        ("GET", CALLS, {"params": {"batch_id": "acb_nope"}}, 404),
        ("GET", CALLS, {"params": {"agent_id": "a", "limit": 500}}, 400),
        ("GET", f"{CALLS}/ac_nope", {}, 404),
        ("GET", "/agents/nothing", {}, 404),
        ("PATCH", BATCHES, {}, 405),
    ],
)  # fmt: skip
def test_error_bodies_have_the_documented_shape(api: SpecClient, method, path, kwargs, status):
    api.call(method, path, status, **kwargs)


def test_auth_and_rate_limit_errors_have_the_documented_shape(sim: CartesiaSimulator, api: SpecClient):
    batch_id = sim.seed_batch(recipients=1)
    sim.inject("GET", f"{BATCHES}/*", Fault.rate_limited(retry_after="1"))
    assert api.call("GET", f"{BATCHES}/{batch_id}", 429)["error_code"] == "concurrency_limited"
    api.session.headers["Authorization"] = "Bearer sk_car_wrong"
    api.call("GET", f"{BATCHES}/{batch_id}", 401)


def test_version_header_beyond_the_spec_enum(sim: CartesiaSimulator):
    """The spec's enum lists only 2026-08-14, the batch docs only 2026-03-01: both are served."""
    header = spec(False).raw["components"]["parameters"]["CartesiaVersionHeader"]
    assert header["schema"]["enum"] == ["2026-08-14"]
    batch_id = sim.seed_batch(recipients=1)
    for version in ("2026-08-14", "2026-03-01"):
        client = SpecClient(sim, version=version)
        client.call("GET", f"{BATCHES}/{batch_id}", 200)
        client.session.close()
    third = SpecClient(sim, version="2025-04-16")
    error = third.call("GET", f"{BATCHES}/{batch_id}", 400, any_route=True)
    assert "2026-03-01" in error["message"]
    assert "2026-08-14" in error["message"]
    third.session.close()
