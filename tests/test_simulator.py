"""The Cartesia simulator over real HTTP: auth, progression on a manual clock, cancel/retry,
pagination, faults, the request log, reset, the CLI and big batches."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_cartesia.testing import DEFAULT_API_KEY, CartesiaSimulator, Fault, SimClock

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSION = "2026-03-01"
BATCHES = "/agents/calls/batches"
CALLS = "/agents/calls"
START = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Client:
    """A requests session against the simulator with the right headers."""

    def __init__(self, sim: CartesiaSimulator) -> None:
        self.sim = sim
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": VERSION})

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.sim.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def batch(self, batch_id: str) -> dict[str, Any]:
        response = self.get(f"{BATCHES}/{batch_id}")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def sim(cartesia_simulator: CartesiaSimulator) -> CartesiaSimulator:
    return cartesia_simulator


@pytest.fixture
def client(sim: CartesiaSimulator) -> Iterator[Client]:
    c = Client(sim)
    yield c
    c.session.close()


def batch_body(n: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Spring renewals",
        "agent_id": "agent_1",
        "from_number_id": "pn_1",
        "recipients": [{"to_number": f"+1415555{i:04d}", "metadata": {"row": i}} for i in range(n)],
        **extra,
    }


def assert_error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error_code", "title", "message", "request_id"}
    assert isinstance(body["title"], str)
    assert isinstance(body["message"], str)
    return body


# -- auth, version, routing ---------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_never_echoed(sim: CartesiaSimulator, client: Client):
    bare = requests.get(sim.url + BATCHES, headers={"Cartesia-Version": VERSION}, timeout=5)
    assert_error(bare, 401)
    wrong = requests.get(
        sim.url + BATCHES, headers={"Authorization": "Bearer sk_car_wrong", "Cartesia-Version": VERSION}, timeout=5
    )
    body = assert_error(wrong, 401)
    assert "sk_car" not in wrong.text
    assert body["error_code"] is None
    # auth comes before the version check
    assert_error(requests.get(sim.url + BATCHES, timeout=5), 401)


def test_x_api_key_and_bearer_are_both_accepted(sim: CartesiaSimulator):
    for headers in (
        {"X-API-Key": sim.api_key},
        {"Authorization": f"bearer {sim.api_key}"},
        {"Authorization": f"Bearer {sim.api_key}"},
    ):
        response = requests.get(sim.url + BATCHES, headers={**headers, "Cartesia-Version": VERSION}, timeout=5)
        assert response.status_code == 200, headers


@pytest.mark.parametrize("version", [None, "2024-06-10", "2026-08-15", ""])
def test_version_header_missing_or_unknown_is_400_naming_accepted_versions(sim: CartesiaSimulator, version):
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    if version is not None:
        headers["Cartesia-Version"] = version
    body = assert_error(requests.get(sim.url + BATCHES, headers=headers, timeout=5), 400)
    assert "2026-03-01" in body["message"]
    assert "2026-08-14" in body["message"]


@pytest.mark.parametrize("version", ["2026-03-01", "2026-08-14"])
def test_both_documented_versions_are_accepted(sim: CartesiaSimulator, version):
    headers = {"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": version}
    assert requests.get(sim.url + BATCHES, headers=headers, timeout=5).status_code == 200


def test_unknown_route_404_wrong_method_405_and_open_liveness(sim: CartesiaSimulator, client: Client):
    assert_error(client.get("/agents/batches"), 404)
    assert_error(client.get(BATCHES + "/"), 404)
    not_allowed = client.delete(BATCHES)
    assert_error(not_allowed, 405)
    assert set(not_allowed.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert_error(client.request("PUT", f"{BATCHES}/acb_1"), 405)
    live = requests.get(sim.url + "/", timeout=5)
    assert live.json() == {"ok": True, "version": "2026-03-01"}


def test_responses_keep_the_connection_alive_with_content_length(sim: CartesiaSimulator):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    headers = {"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": VERSION}
    for _ in range(3):
        conn.request("GET", BATCHES, headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.version == 11
        assert int(response.headers["Content-Length"]) == len(body)
        assert response.headers.get("Connection", "").lower() != "close"
    conn.close()


# -- progression --------------------------------------------------------------------------------------


def test_batch_progresses_with_the_clock_and_is_completed_while_calls_still_run(sim: CartesiaSimulator, client: Client):
    sim.outcomes = {"completed": 1.0}
    sim.call_seconds = (60.0, 60.0)
    sim.dispatch_interval = 2.0
    t0 = sim.clock.now()

    created = client.post(BATCHES, json=batch_body(3))
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "pending"
    assert "recipients" not in body
    assert (body["total_calls_scheduled"], body["total_calls_dispatched"], body["total_calls_finished"]) == (3, 0, 0)
    assert "scheduled_at" not in body
    assert parse(body["admitted_at"]) == t0
    batch_id = body["id"]
    assert client.batch(batch_id)["status"] == "pending"

    sim.clock.advance(2)
    body = client.batch(batch_id)
    assert body["status"] == "in_progress"
    assert [r["status"] for r in body["recipients"]] == ["dispatched", "queued", "queued"]
    assert "agent_call_id" in body["recipients"][0]
    assert "agent_call_id" not in body["recipients"][1]
    assert parse(body["last_updated_at"]) == t0 + timedelta(seconds=2)

    times = sim.batch_times(batch_id)
    assert times.all_dispatched_at == t0 + timedelta(seconds=6)
    sim.clock.advance_to(times.all_dispatched_at)
    body = client.batch(batch_id)
    # The trap: `completed` means every recipient was dispatched, not that any call has ended.
    assert body["status"] == "completed"
    assert (body["total_calls_dispatched"], body["total_calls_finished"]) == (3, 0)
    assert {r["status"] for r in body["recipients"]} <= {"dispatched", "started"}

    sim.clock.advance(12)  # rings last 2-12 s: recipient 0 (dispatched at +2 s) has answered by now
    assert client.batch(batch_id)["recipients"][0]["status"] == "started"

    sim.clock.advance_to(times.all_finished_at - timedelta(milliseconds=1))
    assert client.batch(batch_id)["total_calls_finished"] == 2
    sim.clock.advance_to(times.all_finished_at)
    body = client.batch(batch_id)
    assert (body["status"], body["total_calls_finished"]) == ("completed", 3)
    assert {r["status"] for r in body["recipients"]} == {"completed"}
    assert {r["end_reason"] for r in body["recipients"]} <= {"agent_hangup", "client_hangup"}
    assert parse(body["last_updated_at"]) == times.all_finished_at
    sim.clock.advance(3600)
    assert client.batch(batch_id)["last_updated_at"] == body["last_updated_at"]


def test_scheduled_batch_stays_pending_until_its_time(sim: CartesiaSimulator, client: Client):
    when = sim.clock.now() + timedelta(hours=1)
    created = client.post(BATCHES, json=batch_body(2, scheduled_at=when.isoformat().replace("+00:00", "Z")))
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "pending"
    assert parse(body["scheduled_at"]) == when
    assert "admitted_at" not in body

    sim.clock.advance(3600)
    body = client.batch(body["id"])
    assert body["status"] == "pending"
    assert parse(body["admitted_at"]) == when
    sim.clock.advance(1)
    body = client.batch(body["id"])
    assert (body["status"], body["total_calls_dispatched"]) == ("in_progress", 1)


@pytest.mark.parametrize(
    ("kind", "status", "end_reasons", "has_call"),
    [
        ("completed", "completed", {"agent_hangup", "client_hangup"}, True),
        ("no_answer", "failed", {"dial_no_answer"}, True),
        ("busy", "failed", {"dial_busy"}, True),
        ("dial_failed", "failed", {"dial_failed"}, True),
        ("error", "failed", {"error"}, True),
        ("pre_dial_failure", "failed", {None}, False),
    ],
)
def test_each_outcome_kind_ends_as_documented(
    sim: CartesiaSimulator, client: Client, kind: str, status: str, end_reasons: set, has_call: bool
):
    batch_id = sim.seed_batch(recipients=2, outcomes={kind: 1.0})
    sim.clock.advance_to(sim.batch_times(batch_id).all_finished_at)
    body = client.batch(batch_id)
    assert body["total_calls_finished"] == 2
    assert body["status"] == ("failed" if kind == "pre_dial_failure" else "completed")
    for recipient in body["recipients"]:
        assert recipient["status"] == status
        assert recipient.get("end_reason") in end_reasons
        assert ("agent_call_id" in recipient) is has_call
        assert ("error_message" in recipient) is (not has_call)
    calls = client.get("/agents/calls", params={"batch_id": batch_id}).json()["data"]
    assert len(calls) == (2 if has_call else 0)
    for call in calls:
        assert call["status"] == status
        assert call["end_reason"] in end_reasons
        if kind == "no_answer":
            assert parse(call["end_time"]) - parse(call["start_time"]) == timedelta(seconds=60)


def test_default_mix_has_every_outcome_and_is_deterministic_per_seed():
    def outcomes(seed: int) -> list[tuple[str, str | None]]:
        sim = CartesiaSimulator(seed=seed, clock=SimClock(START))
        batch_id = sim.seed_batch(recipients=400)
        sim.clock.advance_to(sim.batch_times(batch_id).all_finished_at)
        return [(r["status"], r.get("end_reason") or r.get("error_message")) for r in sim.batch(batch_id)["recipients"]]

    first = outcomes(3)
    assert first == outcomes(3)
    assert first != outcomes(4)
    reasons = {reason for _, reason in first}
    assert {"agent_hangup", "client_hangup", "dial_no_answer", "dial_busy", "dial_failed", "error"} <= reasons
    completed = sum(status == "completed" for status, _ in first) / len(first)
    assert 0.5 < completed < 0.75


# -- create validation ----------------------------------------------------------------------------------


def _mutate(**changes: Any) -> dict[str, Any]:
    body = batch_body(2)
    for key, value in changes.items():
        if value is KeyError:
            body.pop(key)
        else:
            body[key] = value
    return body


def _recipients(*items: dict[str, Any]) -> list[dict[str, Any]]:
    return list(items)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_mutate(name=KeyError), "name"),
        (_mutate(agent_id=7), "agent_id"),
        (_mutate(from_number_id=""), "from_number_id"),
        (_mutate(recipients=[]), "recipients"),
        (_mutate(recipients=KeyError), "recipients"),
        (_mutate(recipients=[{"to_number": "+1415555000"}] * 5001), "5000"),
        (_mutate(recipients=_recipients({"to_number": "14155550000"})), "E.164"),
        (_mutate(recipients=_recipients({"to_number": "+04155550000"})), "E.164"),
        (_mutate(recipients=_recipients({"to_number": "+14155550000\n"})), "E.164"),
        (_mutate(recipients=_recipients({"metadata": {}})), "to_number"),
        (_mutate(recipients=_recipients({"to_number": "+14155550000", "metadata": [1]})), "metadata"),
        (_mutate(recipients=_recipients({"to_number": "+14155550000", "metadata": {"x": "y" * 4100}})), "4096"),
        (_mutate(target_concurrency_limit=0), "target_concurrency_limit"),
        (_mutate(target_concurrency_limit=21), "organization"),
        (_mutate(target_concurrency_limit="5"), "target_concurrency_limit"),
        (_mutate(ringing_timeout_seconds=4), "ringing_timeout_seconds"),
        (_mutate(ringing_timeout_seconds=81), "ringing_timeout_seconds"),
        (_mutate(max_call_duration_minutes=0), "max_call_duration_minutes"),
        (_mutate(max_call_duration_minutes=481), "max_call_duration_minutes"),
        (_mutate(region="MARS"), "region"),
        (_mutate(scheduled_at="2026-06-01T13:00:00"), "offset"),
        (_mutate(scheduled_at="tomorrow"), "scheduled_at"),
    ],
)
def test_create_rejects_invalid_bodies_with_400(client: Client, body: dict[str, Any], fragment: str):
    error = assert_error(client.post(BATCHES, json=body), 400)
    assert fragment in error["message"]
    assert "5550000" not in error["message"], "validation messages must not echo phone numbers"
    assert client.sim.batch_count() == 0


def test_create_checks_scheduled_at_against_the_clock(sim: CartesiaSimulator, client: Client):
    now = sim.clock.now()
    for when, fragment in [(now - timedelta(seconds=1), "future"), (now + timedelta(days=30, seconds=1), "30 days")]:
        error = assert_error(client.post(BATCHES, json=batch_body(1, scheduled_at=when.isoformat())), 400)
        assert fragment in error["message"]
    ok = client.post(BATCHES, json=batch_body(1, scheduled_at=(now + timedelta(days=30)).isoformat()))
    assert ok.status_code == 201


def test_create_accepts_limits_at_their_bounds(sim: CartesiaSimulator, client: Client):
    body = batch_body(1, target_concurrency_limit=20, ringing_timeout_seconds=80, max_call_duration_minutes=480)
    body["recipients"][0]["metadata"] = {"x": "y" * 4000}
    body["region"] = "EU"
    body["from_number_id"] = "pn_sip_trunk_1"
    created = client.post(BATCHES, json=body)
    assert created.status_code == 201, created.text
    assert (created.json()["target_concurrency_limit"], created.json()["region"]) == (20, "EU")
    default = client.post(BATCHES, json=batch_body(1)).json()
    assert (default["target_concurrency_limit"], default["region"]) == (10, "US")  # half the org limit


@pytest.mark.parametrize("number_id", ["pn_1", "pn_twilio_1"])
def test_region_is_refused_for_numbers_that_are_not_sip_trunks(sim: CartesiaSimulator, client: Client, number_id):
    error = assert_error(client.post(BATCHES, json=batch_body(1, from_number_id=number_id, region="EU")), 400)
    assert "SIP-trunk" in error["message"] and "omit it" in error["message"]
    assert sim.batch_count() == 0
    with pytest.raises(ValueError, match="SIP-trunk"):
        sim.seed_batch(from_number_id=number_id, region="EU")


def test_region_is_accepted_for_sip_trunk_numbers_and_otherwise_comes_from_the_account(
    sim: CartesiaSimulator, client: Client
):
    sim.sip_trunk_number_ids.add("pn_trunk")
    sim.telephony_region = "APAC"
    trunk = client.post(BATCHES, json=batch_body(1, from_number_id="pn_trunk", region="EU"))
    assert trunk.status_code == 201, trunk.text
    assert trunk.json()["region"] == "EU"
    omitted = client.post(BATCHES, json=batch_body(1, from_number_id="pn_1")).json()
    assert omitted["region"] == "APAC", "an omitted region is the telephony account's, not a fixed US"
    assert sim.batch(sim.seed_batch(from_number_id="pn_sip_2", region="US"))["region"] == "US"
    # the calls say which telephony account placed them
    sim.clock.advance(600)
    calls = client.get(CALLS, params={"batch_id": trunk.json()["id"]}).json()["data"]
    assert {c["telephony_account_type"] for c in calls} == {"sip_trunk"}
    calls = client.get(CALLS, params={"batch_id": omitted["id"]}).json()["data"]
    assert {c["telephony_account_type"] for c in calls} == {"cartesia"}
    sim.reset()
    assert (sim.sip_trunk_number_ids, sim.telephony_region) == (set(), "US")


def test_metadata_limit_is_a_setting(sim: CartesiaSimulator, client: Client):
    big = batch_body(1)
    big["recipients"][0]["metadata"] = {"x": "y" * 5000}
    assert "4096" in assert_error(client.post(BATCHES, json=big), 400)["message"]
    sim.metadata_max_bytes = 100
    small = batch_body(1)
    small["recipients"][0]["metadata"] = {"x": "y" * 200}
    assert "at most 100" in assert_error(client.post(BATCHES, json=small), 400)["message"]
    sim.metadata_max_bytes = None
    assert client.post(BATCHES, json=big).status_code == 201
    sim.reset()
    assert sim.metadata_max_bytes == 4096


def test_create_refuses_bad_json_and_unknown_agents_or_numbers(sim: CartesiaSimulator, client: Client):
    assert_error(client.post(BATCHES, data=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert_error(client.post(BATCHES, json=[1, 2]), 400)
    assert_error(client.post(BATCHES, json=_mutate(agent_id="agent_missing_1")), 404)
    sim.unknown_agent_ids.add("agent_gone")
    assert_error(client.post(BATCHES, json=_mutate(agent_id="agent_gone")), 404)
    assert_error(client.post(BATCHES, json=_mutate(from_number_id="pn_missing")), 404)
    assert sim.batch_count() == 0


def test_batch_ids_are_prefixed_and_deterministic_per_seed():
    def ids(seed: int) -> tuple[str, list[str], list[str]]:
        sim = CartesiaSimulator(seed=seed, clock=SimClock(START))
        batch_id = sim.seed_batch(recipients=3, outcomes={"completed": 1.0})
        sim.clock.advance(10)
        recipients = sim.batch(batch_id)["recipients"]
        return batch_id, [r["id"] for r in recipients], [r["agent_call_id"] for r in recipients]

    batch_id, recipient_ids, call_ids = ids(1)
    assert batch_id.startswith("acb_")
    assert all(r.startswith("acbr_") for r in recipient_ids)
    assert all(c.startswith("ac_") for c in call_ids)
    assert ids(1) == (batch_id, recipient_ids, call_ids)
    assert ids(2)[0] != batch_id


# -- cancel and retry ---------------------------------------------------------------------------------


def test_cancel_stops_queued_recipients_and_lets_calls_in_flight_finish(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(
        recipients=5, dispatch_interval=10, call_seconds=(100.0, 100.0), outcomes={"completed": 1.0}
    )
    sim.clock.advance(25)  # recipients 0 and 1 dispatched

    cancelled = client.post(f"{BATCHES}/{batch_id}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert "recipients" not in body
    assert (body["status"], body["total_calls_dispatched"], body["total_calls_finished"]) == ("cancelled", 2, 0)
    again = client.post(f"{BATCHES}/{batch_id}/cancel").json()
    assert again == body, "cancel is idempotent"

    detail = client.batch(batch_id)
    assert [r["status"] for r in detail["recipients"]][2:] == ["cancelled"] * 3
    assert all("agent_call_id" not in r for r in detail["recipients"][2:])

    sim.clock.advance(600)
    detail = client.batch(batch_id)
    assert [r["status"] for r in detail["recipients"]] == ["completed"] * 2 + ["cancelled"] * 3
    assert (detail["status"], detail["total_calls_dispatched"], detail["total_calls_finished"]) == ("cancelled", 2, 2)
    assert len(client.get("/agents/calls", params={"batch_id": batch_id}).json()["data"]) == 2
    error = assert_error(client.post(f"{BATCHES}/{batch_id}/retry"), 400)
    assert "cancelled" in error["message"]


def test_cancel_after_every_dispatch_changes_nothing(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=2, call_seconds=(100.0, 100.0), outcomes={"completed": 1.0})
    sim.clock.advance(3)
    before = client.batch(batch_id)
    assert before["status"] == "completed"
    assert before["total_calls_finished"] == 0
    after = client.post(f"{BATCHES}/{batch_id}/cancel").json()
    before.pop("recipients")
    assert after == before
    sim.clock.advance(600)
    assert client.batch(batch_id)["total_calls_finished"] == 2


def test_cancel_and_retry_of_unknown_batch_are_404(client: Client):
    for action in ("cancel", "retry"):
        assert_error(client.post(f"{BATCHES}/acb_nope/{action}"), 404)
    assert_error(client.get(f"{BATCHES}/acb_nope"), 404)


def test_retry_requeues_failed_recipients_only_and_lists_every_attempt(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(
        recipients=[
            {"to_number": "+14155550001", "outcome": "completed"},
            {"to_number": "+14155550002", "outcome": "no_answer"},
            {"to_number": "+14155550003", "outcome": "busy"},
            {"to_number": "+14155550004", "outcome": "pre_dial_failure", "metadata": {"k": 1}},
        ],
        outcomes={"completed": 1.0},  # what retries draw
    )
    sim.clock.advance_to(sim.batch_times(batch_id).all_finished_at)
    first = client.batch(batch_id)
    assert [r["status"] for r in first["recipients"]] == ["completed", "failed", "failed", "failed"]
    assert client.get("/agents/calls", params={"batch_id": batch_id}).json()["data"].__len__() == 3

    retried = client.post(f"{BATCHES}/{batch_id}/retry")
    assert retried.status_code == 200
    body = retried.json()
    assert (body["status"], body["retry_count"], body["total_calls_dispatched"]) == ("in_progress", 1, 1)
    assert parse(body["last_updated_at"]) == sim.clock.now()
    detail = client.batch(batch_id)
    assert detail["recipients"][0] == first["recipients"][0], "completed recipients are untouched"
    for recipient in detail["recipients"][1:]:
        assert recipient["status"] == "queued"
        assert not {"agent_call_id", "end_reason", "error_message"} & set(recipient)
    assert detail["recipients"][3]["metadata"] == {"k": 1}

    sim.clock.advance_to(sim.batch_times(batch_id).all_finished_at)
    done = client.batch(batch_id)
    assert (done["status"], done["total_calls_finished"], done["retry_count"]) == ("completed", 4, 1)
    assert [r["status"] for r in done["recipients"]] == ["completed"] * 4
    old_ids = {r.get("agent_call_id") for r in first["recipients"]}
    assert all(r["agent_call_id"] not in old_ids for r in done["recipients"][1:])
    calls = client.get("/agents/calls", params={"batch_id": batch_id, "limit": 100}).json()["data"]
    assert len(calls) == 6, "one record per dialed attempt; the pre-dial failure has none"
    numbers = [c["telephony_params"]["to"] for c in calls]
    assert numbers.count("+14155550002") == 2
    assert numbers.count("+14155550004") == 1


def test_retry_with_nothing_failed_only_counts(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=2, outcomes={"completed": 1.0})
    sim.clock.advance(1)
    body = client.post(f"{BATCHES}/{batch_id}/retry").json()
    assert (body["retry_count"], body["total_calls_dispatched"]) == (1, 1)


# -- pagination -------------------------------------------------------------------------------------


def test_list_batches_pages_both_ways_with_exact_has_more_and_next_page(sim: CartesiaSimulator, client: Client):
    ids = [sim.seed_batch(name=f"b{i}", recipients=1) for i in range(5)]
    b0, b1, b2, b3, b4 = ids

    def page(**params: Any) -> tuple[list[str], bool, str | None]:
        response = client.get(BATCHES, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert all("recipients" not in b for b in body["data"])
        return [b["id"] for b in body["data"]], body["has_more"], body["next_page"]

    assert page() == ([b4, b3, b2, b1, b0], False, None)
    assert page(limit=2) == ([b4, b3], True, b3)
    assert page(limit=2, starting_after=b3) == ([b2, b1], True, b1)
    assert page(limit=2, starting_after=b1) == ([b0], False, None)
    assert page(limit=2, starting_after=b0) == ([], False, None)
    assert page(limit=2, ending_before=b0) == ([b2, b1], True, b2)
    assert page(limit=2, ending_before=b2) == ([b4, b3], False, None)
    assert page(limit=5) == ([b4, b3, b2, b1, b0], False, None)
    assert page(limit=4) == ([b4, b3, b2, b1], True, b1)


def test_list_batches_filters_by_agent_and_defaults_to_ten(sim: CartesiaSimulator, client: Client):
    mine = [sim.seed_batch(agent_id="agent_a", recipients=1) for _ in range(12)]
    sim.seed_batch(agent_id="agent_b", recipients=1)
    body = client.get(BATCHES, params={"agent_id": "agent_a"}).json()
    assert [b["id"] for b in body["data"]] == mine[::-1][:10]
    assert (body["has_more"], body["next_page"]) == (True, mine[2])
    rest = client.get(BATCHES, params={"agent_id": "agent_a", "starting_after": mine[2]}).json()
    assert [b["id"] for b in rest["data"]] == [mine[1], mine[0]]
    assert rest["has_more"] is False


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"starting_after": "acb_unknown"},
        {"ending_before": "acb_unknown"},
        {"starting_after": "X", "ending_before": "Y"},
    ],
)
def test_list_batches_refuses_bad_pagination(sim: CartesiaSimulator, client: Client, params):
    sim.seed_batch(recipients=1)
    assert_error(client.get(BATCHES, params=params), 400)


def test_list_calls_pages_through_every_attempt(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=7, outcomes={"completed": 1.0})
    sim.clock.advance(600)
    seen: list[str] = []
    params: dict[str, Any] = {"batch_id": batch_id, "limit": 3}
    while True:
        body = client.get("/agents/calls", params=params).json()
        seen += [c["id"] for c in body["data"]]
        if not body["has_more"]:
            assert body["next_page"] is None
            break
        assert body["next_page"] == body["data"][-1]["id"]
        params["starting_after"] = body["next_page"]
    recipients = sim.batch(batch_id)["recipients"]
    assert seen == [r["agent_call_id"] for r in reversed(recipients)], "newest start time first"
    back = client.get("/agents/calls", params={"batch_id": batch_id, "limit": 3, "ending_before": seen[-1]}).json()
    assert [c["id"] for c in back["data"]] == seen[3:6]
    assert back["next_page"] == seen[3]


# -- calls ------------------------------------------------------------------------------------------


def test_list_calls_requires_a_scope_and_valid_filters(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=2)
    calls = "/agents/calls"
    assert_error(client.get(calls), 400)
    assert_error(client.get(calls, params={"batch_id": batch_id, "agent_id": "agent_b"}), 400)
    assert_error(client.get(calls, params={"batch_id": "acb_nope"}), 404)
    assert_error(client.get(calls, params={"agent_id": "agent_missing_7"}), 404)
    assert_error(client.get(calls, params={"agent_id": "agent_a", "expand": "summary"}), 400)
    assert_error(client.get(calls, params={"agent_id": "agent_a", "start_time_gte": "yesterday"}), 400)
    assert_error(client.get(calls, params={"agent_id": "agent_a", "start_time_gte": "2026-06-01T00:00:00"}), 400)
    reversed_bounds = {"agent_id": "agent_a", "start_time_gte": "2026-06-02T00:00:00Z"}
    reversed_bounds["start_time_lte"] = "2026-06-01T00:00:00Z"
    assert_error(client.get(calls, params=reversed_bounds), 400)
    for limit in ("0", "101"):
        assert_error(client.get(calls, params={"agent_id": "agent_a", "limit": limit}), 400)
    assert client.get(calls, params={"agent_id": "agent_zzz"}).json() == {
        "data": [],
        "has_more": False,
        "next_page": None,
    }


def test_list_calls_filters_by_agent_and_start_time(sim: CartesiaSimulator, client: Client):
    t0 = sim.clock.now()
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=4, dispatch_interval=10, outcomes={"completed": 1.0})
    sim.seed_batch(agent_id="agent_b", recipients=2)
    sim.clock.advance(600)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    params = {
        "agent_id": "agent_a",
        "start_time_gte": (t0 + timedelta(seconds=20)).strftime(fmt),
        "start_time_lte": (t0 + timedelta(seconds=30)).strftime(fmt),
    }
    body = client.get("/agents/calls", params=params).json()
    recipients = sim.batch(batch_id)["recipients"]
    assert [c["id"] for c in body["data"]] == [recipients[2]["agent_call_id"], recipients[1]["agent_call_id"]]
    everything = client.get("/agents/calls", params={"agent_id": "agent_a"}).json()["data"]
    assert {c["agent_id"] for c in everything} == {"agent_a"}
    assert len(everything) == 4


def test_transcript_only_with_expand_and_always_on_get_call(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=2, outcomes={"completed": 1.0}, call_seconds=(50, 50))
    sim.clock.advance(600)
    plain = client.get("/agents/calls", params={"batch_id": batch_id}).json()["data"]
    assert all("transcript" not in c for c in plain)
    expanded = client.get("/agents/calls", params={"batch_id": batch_id, "expand": "transcript"}).json()["data"]
    for call in expanded:
        assert call["transcript"]
        assert call["transcript"][0]["role"] == "assistant"
        assert call["summary"]
        assert call["metadata"] == {"customer_id": call["metadata"]["customer_id"]}
    one = client.get(f"/agents/calls/{plain[0]['id']}").json()
    assert one["transcript"] == expanded[0]["transcript"]
    assert one["telephony_params"]["to"].startswith("+1415")
    assert one["telephony_params"]["direction"] == "outbound"


def test_only_the_routes_the_hook_calls_are_served(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=1, outcomes={"completed": 1.0})
    sim.clock.advance(600)
    call_path = f"/agents/calls/{sim.batch(batch_id)['recipients'][0]['agent_call_id']}"
    assert client.get(call_path).status_code == 200
    assert_error(client.post("/agents/calls", json={}), 405)
    assert_error(client.delete(call_path), 405)
    assert_error(client.post(f"{call_path}/cancel"), 404)
    assert_error(client.get(f"{call_path}/audio"), 404)


def test_calls_of_unknown_or_undispatched_ids_are_404(sim: CartesiaSimulator, client: Client):
    def seeded(on: CartesiaSimulator) -> str:
        return on.seed_batch(recipients=3, dispatch_interval=10, outcomes={"completed": 1.0})

    batch_id = seeded(sim)
    # Ids are deterministic per seed: a twin simulator run ahead tells the id recipient 2 will get.
    twin = CartesiaSimulator(seed=sim.seed, clock=SimClock(sim.clock.start))
    assert seeded(twin) == batch_id
    twin.clock.advance(30)
    future_call = twin.batch(batch_id)["recipients"][2]["agent_call_id"]
    sim.clock.advance(10)
    first_call = sim.batch(batch_id)["recipients"][0]["agent_call_id"]
    assert client.get(f"/agents/calls/{first_call}").status_code == 200
    assert_error(client.get(f"/agents/calls/{future_call}"), 404)  # not dialed yet: no record
    sim.clock.advance(20)
    assert client.get(f"/agents/calls/{future_call}").status_code == 200
    assert_error(client.get("/agents/calls/ac_nope"), 404)


# -- faults -------------------------------------------------------------------------------------------


def test_rate_limit_fault_with_retry_after_applies_times_then_clears(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=1)
    sim.inject("GET", f"{BATCHES}/*", Fault.rate_limited(retry_after="2"), times=2)
    assert client.get(BATCHES).status_code == 200, "the list route does not match the pattern"
    for _ in range(2):
        response = client.get(f"{BATCHES}/{batch_id}")
        body = assert_error(response, 429)
        assert response.headers["Retry-After"] == "2"
        assert body["error_code"] == "concurrency_limited"
    assert client.get(f"{BATCHES}/{batch_id}").status_code == 200
    assert sim.pending_faults() == 0


def test_faults_come_before_auth_and_apply_in_injection_order(sim: CartesiaSimulator):
    sim.inject("*", "/agents/*", Fault.server_error(503))
    sim.inject("GET", "/agents/calls", Fault(status=418, body={"teapot": True}, headers={"X-Sim": "1"}))
    first = requests.get(sim.url + "/agents/calls", timeout=5)  # no key at all
    assert_error(first, 503)
    second = requests.get(sim.url + "/agents/calls", timeout=5)
    assert (second.status_code, second.json(), second.headers["X-Sim"]) == (418, {"teapot": True}, "1")
    assert requests.get(sim.url + "/agents/calls", timeout=5).status_code == 401


def test_html_fault_is_a_proxy_page(sim: CartesiaSimulator, client: Client):
    sim.inject("GET", BATCHES, Fault.html())
    response = client.get(BATCHES)
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert response.text.startswith("<html>")
    assert "502 Bad Gateway" in response.text


def test_malformed_json_fault_sends_a_truncated_body(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=3)
    sim.inject("GET", f"{BATCHES}/*", Fault(malformed_json=True))
    response = client.get(f"{BATCHES}/{batch_id}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert int(response.headers["Content-Length"]) == len(response.content)


def test_drop_fault_closes_without_answer_and_does_not_process(sim: CartesiaSimulator, client: Client):
    sim.inject("POST", BATCHES, Fault(drop=True))
    with pytest.raises(requests.ConnectionError):
        client.post(BATCHES, json=batch_body(1))
    assert sim.batch_count() == 0
    assert sim.count("POST", BATCHES) == 1
    assert client.post(BATCHES, json=batch_body(1)).status_code == 201


def test_drop_after_processing_creates_the_batch_but_answers_nothing(sim: CartesiaSimulator, client: Client):
    sim.inject("POST", BATCHES, Fault(drop_after_processing=True))
    with pytest.raises(requests.ConnectionError):
        client.post(BATCHES, json=batch_body(2))
    assert sim.batch_count() == 1
    (listed,) = client.get(BATCHES).json()["data"]
    assert listed["name"] == "Spring renewals"
    assert listed["total_calls_scheduled"] == 2


def test_delay_fault_is_slow_and_trips_client_timeouts(sim: CartesiaSimulator, client: Client):
    sim.inject("GET", BATCHES, Fault(delay=0.3))
    started = time.monotonic()
    assert client.get(BATCHES).status_code == 200
    assert time.monotonic() - started >= 0.3
    sim.inject("GET", BATCHES, Fault(delay=5.0))
    with pytest.raises(requests.ReadTimeout):
        client.get(BATCHES, timeout=0.1)
    assert client.get(BATCHES).status_code == 200  # a fresh connection is served at once


def test_reset_cuts_a_delayed_request_short_so_it_never_lands_in_the_next_test(sim: CartesiaSimulator):
    sim.inject("POST", BATCHES, Fault(delay=30.0))
    outcome: list[BaseException | int] = []

    def create() -> None:
        try:
            outcome.append(Client(sim).post(BATCHES, json=batch_body(1), timeout=10).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    while sim.count("POST", BATCHES) == 0 and thread.is_alive():  # wait for arrival (no sleep)
        pass
    sim.reset()
    thread.join()
    # Cut short: the connection was closed. Not cut short, the client's 10 s read timeout would end it.
    assert isinstance(outcome[0], requests.ConnectionError), outcome
    assert not isinstance(outcome[0], requests.Timeout), "the 30 s delay was not cut short"
    assert sim.batch_count() == 0


def test_fault_constructor_refuses_contradictions():
    with pytest.raises(ValueError, match="one of"):
        Fault(status=500, drop=True)
    with pytest.raises(ValueError, match="one of"):
        Fault(drop=True, drop_after_processing=True)
    with pytest.raises(ValueError, match="one of"):
        Fault(malformed_json=True, body="x")
    with pytest.raises(ValueError, match="no headers"):
        Fault(drop=True, headers={"Retry-After": "1"})
    with pytest.raises(ValueError, match="delay"):
        Fault(delay=-1)


def test_latency_delays_every_response_without_blocking_others(sim: CartesiaSimulator):
    """Latency is a lower bound on every response; a request held in the server blocks no other one.

    No upper bound on time: a request is held (a 30 s delay) until another completes beside it.
    """
    sim.latency = 0.3
    headers = {"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": VERSION}
    started = time.monotonic()
    requests.get(sim.url + BATCHES, headers=headers, timeout=5).raise_for_status()
    assert time.monotonic() - started >= 0.3

    sim.latency = 0.0
    sim.inject("POST", BATCHES, Fault(delay=30.0))
    held: list[BaseException | int] = []

    def create() -> None:
        try:
            held.append(Client(sim).post(BATCHES, json=batch_body(1), timeout=60).status_code)
        except requests.RequestException as exc:
            held.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    while sim.count("POST", BATCHES) == 0 and thread.is_alive():  # wait for arrival (no sleep)
        pass
    for _ in range(4):  # served while the POST is still held in the server
        requests.get(sim.url + BATCHES, headers=headers, timeout=5).raise_for_status()
    assert thread.is_alive() and held == [], "the held request ended before the others were served"
    sim.reset()  # cuts the held request short
    thread.join()


# -- request log, reset, clock --------------------------------------------------------------------------


def test_request_log_records_and_counts_with_patterns(sim: CartesiaSimulator, client: Client):
    batch_id = sim.seed_batch(recipients=1)
    client.get(BATCHES, params={"limit": "5", "agent_id": "a"})
    client.get(f"{BATCHES}/{batch_id}")
    client.post(f"{BATCHES}/{batch_id}/cancel")
    client.post(BATCHES, json=batch_body(1))

    assert sim.count() == 4
    assert sim.count("GET") == 2
    assert sim.count("get", BATCHES) == 1
    assert sim.count(path=f"{BATCHES}/*") == 1
    assert sim.count(path=f"{BATCHES}/{{batch_id}}") == 1
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 1
    first, _, _, create = sim.requests
    assert first.query == {"limit": "5", "agent_id": "a"}
    assert first.json is None
    assert create.json["name"] == "Spring renewals"
    assert create.headers["content-type"] == "application/json"
    assert create.at == sim.clock.now()
    assert sim.api_key not in repr(create)
    assert "***" in repr(create)


def test_reset_forgets_everything_and_restores_settings(sim: CartesiaSimulator, client: Client):
    start = sim.clock.now()
    sim.seed_batch(recipients=1)
    sim.inject("GET", "/x", Fault.server_error())
    sim.org_concurrency_limit = 1
    sim.unknown_agent_ids.add("agent_1")
    sim.outcomes = {"busy": 1.0}
    sim.clock.tick_per_request = 3
    client.get(BATCHES)
    sim.clock.advance(100)

    sim.reset()
    assert (sim.batch_count(), sim.requests, sim.pending_faults()) == (0, [], 0)
    assert sim.clock.now() == start
    assert sim.clock.tick_per_request == 0
    assert (sim.org_concurrency_limit, sim.unknown_agent_ids, sim.outcomes) == (20, set(), None)
    assert client.post(BATCHES, json=batch_body(1)).status_code == 201


def test_tick_per_request_lets_a_polling_client_progress_without_sleeping():
    clock = SimClock(START, tick_per_request=5)
    with CartesiaSimulator(clock=clock) as sim:
        batch_id = sim.seed_batch(recipients=3, outcomes={"completed": 1.0}, call_seconds=(30, 30))
        client = Client(sim)
        polls = 0
        while True:
            polls += 1
            body = client.batch(batch_id)
            if body["status"] == "completed" and body["total_calls_finished"] == body["total_calls_dispatched"]:
                break
            assert polls < 100
        times = [r.at for r in sim.requests]
        assert all(b - a == timedelta(seconds=5) for a, b in itertools.pairwise(times))
        assert times[0] == START + timedelta(seconds=5)
        client.session.close()


def test_sim_clock_manual_and_real():
    clock = SimClock(START)
    clock.advance(1.5)
    assert clock.now() == START + timedelta(seconds=1.5)
    clock.advance_to(START)  # the past: no-op
    assert clock.now() == START + timedelta(seconds=1.5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        SimClock(datetime(2026, 6, 1))  # naive
    clock.reset()
    assert clock.now() == START

    fake = [100.0]
    real = SimClock.real(speed=60, start=START, timer=lambda: fake[0])
    fake[0] += 2
    assert real.now() == START + timedelta(minutes=2)
    assert real.is_real
    real.advance(30)
    assert real.now() == START + timedelta(minutes=2, seconds=30)
    assert SimClock().now().tzinfo == timezone.utc


# -- lifecycle, errors, fixtures -----------------------------------------------------------------------


def test_importing_the_simulator_loads_no_airflow_and_no_http_clients():
    code = (
        "import sys, airflow_provider_cartesia.testing as t, airflow_provider_cartesia.testing.__main__;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'requests', 'httpx', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_loopback_addresses_are_bound():
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ValueError, match="loopback"):
            CartesiaSimulator(host=host)
    CartesiaSimulator(host="localhost")


def test_stop_closes_keep_alive_connections_and_is_idempotent():
    sim = CartesiaSimulator().start()
    client = Client(sim)
    assert client.get(BATCHES).status_code == 200
    url = sim.url
    sim.stop()
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        client.session.get(url + BATCHES, timeout=2)
    with pytest.raises(RuntimeError):
        _ = sim.url
    client.session.close()


def test_a_bug_in_a_handler_answers_500_and_is_collected(
    sim: CartesiaSimulator, client: Client, monkeypatch: pytest.MonkeyPatch
):
    batch_id = sim.seed_batch(recipients=1)

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("airflow_provider_cartesia.testing.api.batch_json", broken)
    assert_error(client.get(f"{BATCHES}/{batch_id}"), 500)
    assert [str(e) for e in sim.server_errors] == ["simulated bug"]
    sim.server_errors.clear()  # or the fixture would (rightly) fail this test


def test_fixture_fails_a_test_whose_simulator_broke(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_breaks(cartesia_simulator):
            cartesia_simulator.server_errors.append(RuntimeError("boom"))

        def test_fine(cartesia_simulator):
            assert cartesia_simulator.batch_count() == 0
        """
    )
    result = pytester.runpytest_inprocess("-p", "airflow_provider_cartesia.testing.pytest_plugin")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*simulator raised 1 error*boom*"])


def test_cartesia_connection_fixture_points_airflow_at_the_simulator_for_one_test(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import os

        from airflow_provider_cartesia.hooks.cartesia import CartesiaHook


        def test_three_lines(cartesia_connection, cartesia_simulator):
            batch_id = cartesia_simulator.seed_batch(recipients=2)
            assert CartesiaHook(cartesia_connection).get_call_batch(batch_id).total_calls_scheduled == 2
            assert cartesia_simulator.count("GET", "/agents/calls/batches/*") == 1


        def test_undone_afterwards():
            assert "AIRFLOW_CONN_CARTESIA_DEFAULT" not in os.environ
        """
    )
    result = pytester.runpytest_inprocess("-p", "airflow_provider_cartesia.testing.pytest_plugin")
    result.assert_outcomes(passed=2)


def test_big_batch_of_5000_recipients(sim: CartesiaSimulator, client: Client):
    """How fast it is served is measured in benchmarks (docs/benchmarks.md), not asserted here."""
    created = client.post(BATCHES, json=batch_body(5000))
    assert created.status_code == 201
    assert_error(client.post(BATCHES, json=batch_body(5001)), 400)
    sim.clock.advance(2500)
    body = client.batch(created.json()["id"])
    assert len(body["recipients"]) == 5000
    assert body["status"] == "in_progress"


# -- CLI --------------------------------------------------------------------------------------------


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_cartesia.testing", "--port", "0", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines: dict[str, str] = {}
    while True:
        line = process.stdout.readline()
        assert line, f"the CLI exited early: {process.stderr.read() if process.stderr else ''}"
        if line.startswith("Serving"):
            return process, lines
        if line.startswith("export "):
            lines["export"] = line.strip()
            continue
        key, _, value = line.partition(": ")
        lines[key] = value.strip()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_cleanly_on_signals(stop_signal: signal.Signals):
    secret = "sk_car_cli_secret_value"
    process, lines = _start_cli("--api-key", secret, "--seed-batch", "3", "--tick", "10")
    try:
        url, batch_id = lines["URL"], lines["Seeded batch"].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert lines["API key"] == secret
        headers = {"Authorization": f"Bearer {secret}", "Cartesia-Version": VERSION}
        body = requests.get(f"{url}{BATCHES}/{batch_id}", headers=headers, timeout=5).json()
        assert len(body["recipients"]) == 3
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert err == "", "no traceback, no log noise"
    assert out.strip().endswith("Stopped.")


def test_cli_prints_a_connection_line_that_works_as_pasted(monkeypatch: pytest.MonkeyPatch):
    """Paste the printed line into a shell, then use the connection through the hook."""
    process, lines = _start_cli("--scenario", "fails")
    try:
        assert lines["API key"] == DEFAULT_API_KEY
        headers = {"Authorization": f"Bearer {lines['API key']}", "Cartesia-Version": VERSION}
        listed = requests.get(f"{lines['URL']}{BATCHES}", headers=headers, timeout=5)
        assert listed.status_code == 200 and [b["id"] for b in listed.json()["data"]] == [lines["Scenario fails"]]
        export = lines["export"]
        exported = subprocess.run(
            ["bash", "-c", f"{export} && printf %s \"$AIRFLOW_CONN_CARTESIA_DEFAULT\""],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        conn = json.loads(exported.stdout)
        assert (conn["conn_type"], conn["host"], conn["password"]) == ("cartesia", lines["URL"], DEFAULT_API_KEY)
        monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_DEFAULT", exported.stdout)
        from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

        batch = CartesiaHook().get_call_batch(lines["Scenario fails"])
        assert batch.name == "Scenario: fails" and batch.total_calls_scheduled == 10
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_cli_help_explains_every_scenario():
    from airflow_provider_cartesia.testing.scenarios import SCENARIOS

    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_cartesia.testing", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in SCENARIOS:
        assert re.search(rf"^  {re.escape(name)} +\w", out, re.MULTILINE), f"--help does not explain {name}"
    bad = subprocess.run(
        [sys.executable, "-m", "airflow_provider_cartesia.testing", "--scenario", "nope"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


@pytest.mark.parametrize("zero", [0x0660, 0xFF10, 0x0966], ids=["arabic-indic", "fullwidth", "devanagari"])
def test_create_rejects_a_number_written_with_non_ascii_digits(client: Client, zero: int):
    """E.164 is ASCII digits; ``\\d`` would accept any script's digits (one person, several spellings)."""
    number = "+1" + "".join(chr(zero + int(d)) for d in "4155550000")
    error = assert_error(client.post(BATCHES, json=_mutate(recipients=_recipients({"to_number": number}))), 400)
    assert "E.164" in error["message"]
    assert client.sim.batch_count() == 0
