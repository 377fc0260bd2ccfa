"""The API key and phone numbers never appear in a log line or exception text, on any error path."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from tests.helpers import SleepRecorder, cartesia_connection_json

PHONE = "+14155550123"
KEY_FRAGMENT = "sk_car_"


def _error_paths(
    sim: CartesiaSimulator, hook: CartesiaHook, impatient: CartesiaHook
) -> list[tuple[str, Callable[[], Any]]]:
    """Each path consumes exactly the faults it injects (``tries``: every attempt of a retried read),
    so no fault spills into the next path. ``impatient`` has a short read timeout; the others' answers
    arrive in time on a busy machine too."""
    route = "/agents/calls/batches/*"
    tries = hook.settings.max_retries + 1

    def fault(f: Fault, call: Callable[[], Any], times: int = 1, path: str = route) -> Callable[[], Any]:
        def run() -> Any:
            sim.inject("*", path, f, times=times)
            return call()

        return run

    def create(recipients: list[dict[str, Any]] | None = None) -> Any:
        return hook.create_call_batch("n", "agent_1", "pn_1", recipients or [{"to_number": PHONE}])

    def echo_key_body() -> Any:
        # A hostile or buggy proxy echoing the request's Authorization header and a phone number.
        body = f"Unauthorized: Bearer {sim.api_key} for {PHONE}"
        sim.inject("GET", route, Fault(status=401, body=body))
        return hook.get_call_batch("acb_1")

    return [
        ("401 json", fault(Fault(status=401), lambda: hook.get_call_batch("acb_1"))),
        ("404", lambda: hook.get_call_batch("acb_missing")),
        ("429 exhausted", fault(Fault.rate_limited("1"), lambda: hook.get_call_batch("acb_1"), times=tries)),
        ("500 exhausted", fault(Fault.server_error(500), lambda: hook.get_call_batch("acb_1"), times=tries)),
        ("html 502", fault(Fault.html(502), lambda: hook.get_call_batch("acb_1"), times=tries)),
        ("drop", fault(Fault(drop=True), lambda: hook.get_call_batch("acb_1"), times=tries)),
        ("timeout", fault(Fault(delay=60.0), lambda: impatient.get_call_batch("acb_1"), times=tries)),
        ("malformed", fault(Fault(malformed_json=True), lambda: hook.get_call_batch("acb_1"))),
        ("echoed key", echo_key_body),
        ("invalid number", lambda: create([{"to_number": PHONE.lstrip("+")}])),
        ("create dropped", lambda: (sim.inject("POST", "/agents/calls/batches", Fault(drop=True)), create())),
        ("bad id", lambda: hook.get_call_batch(f"../{PHONE}")),
        ("async 401", fault(Fault(status=401), lambda: asyncio.run(hook.aget_call_batch("acb_1")))),
        ("async drop", fault(Fault(drop=True), lambda: asyncio.run(hook.aget_call_batch("acb_1")), times=tries)),
        ("test_connection", fault(Fault(status=401), hook.test_connection, path="/agents/calls/batches")),
    ]


def test_no_key_or_phone_number_in_logs_or_exceptions(
    cartesia_simulator: CartesiaSimulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_S", cartesia_connection_json(cartesia_simulator))
    hook, impatient = CartesiaHook("cartesia_s"), CartesiaHook("cartesia_s", timeout=0.2)
    sleeps = SleepRecorder()
    for each in (hook, impatient):
        each._sleep, each._asleep = sleeps, sleeps.asleep
    caplog.set_level(logging.DEBUG)

    texts: list[str] = []
    raised = 0
    spilled: dict[str, int] = {}
    for name, path in _error_paths(cartesia_simulator, hook, impatient):
        try:
            result = path()
        except Exception as exc:
            raised += 1
            texts.append(f"{name}: {exc!s} {exc!r}")
            texts.append("".join(traceback.format_exception(exc)))
        else:
            texts.append(f"{name}: {result!r}")
        if cartesia_simulator.pending_faults():
            spilled[name] = cartesia_simulator.pending_faults()
    out, err = capsys.readouterr()
    texts += [out, err, caplog.text, *(json.dumps(r.__dict__, default=str) for r in caplog.records)]
    everything = "\n".join(texts)

    assert not spilled, f"faults left for the next path: {spilled}"
    assert raised >= 13, "the error paths must really fail"
    assert len(caplog.records) + out.count("\n") + err.count("\n") > 0, "logs were captured"
    assert "Retrying in" in everything, "retry warnings were logged and inspected"
    assert cartesia_simulator.api_key not in everything
    assert KEY_FRAGMENT + "test" not in everything
    assert PHONE not in everything and PHONE.lstrip("+") not in everything


def test_models_keep_personal_data_out_of_repr(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(
        recipients=[{"to_number": PHONE, "metadata": {"name": "Ada Lovelace"}}], outcomes={"completed": 1.0}
    )
    cartesia_simulator.clock.advance(10_000)
    batch = hook.get_call_batch(batch_id)
    calls = list(hook.list_agent_calls(batch_id=batch_id, expand_transcript=True))
    shown = repr(batch) + str(batch) + repr(batch.recipients) + repr(calls) + json.dumps(batch.summary())
    assert PHONE not in shown and "Ada Lovelace" not in shown
    assert batch.recipients and batch.recipients[0].to_number == PHONE, "the data itself is still there"
