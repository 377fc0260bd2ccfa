"""CallBatchLink: the URL it builds, stored at execute time, and the link the worker reads back from XCom."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from airflow.sdk import DAG, BaseOperator

from airflow_provider_cartesia.exceptions import CartesiaInvalidIdError
from airflow_provider_cartesia.get_provider_info import get_provider_info
from airflow_provider_cartesia.hooks.cartesia import CartesiaHookMixin
from airflow_provider_cartesia.links import CALL_BATCH_URL_XCOM_KEY, CallBatchLink, call_batch_url
from airflow_provider_cartesia.testing import CartesiaSimulator
from airflow_provider_cartesia.testing.dag_test import run_dag_test
from tests.helpers import cartesia_connection_json


def test_call_batch_url() -> None:
    assert call_batch_url("https://play.cartesia.ai", "acb_1") == "https://play.cartesia.ai/agents/calls/batches/acb_1"
    assert call_batch_url("https://dash.example.com/org/", "acb_1") == (
        "https://dash.example.com/org/agents/calls/batches/acb_1"
    )
    assert call_batch_url("https://x", "acb_1:2") == "https://x/agents/calls/batches/acb_1%3A2"
    for bad in ("../acb_1", "acb/1", "acb?1", ""):
        with pytest.raises(CartesiaInvalidIdError):
            call_batch_url("https://x", bad)


def test_the_link_is_registered_under_its_name() -> None:
    assert CallBatchLink().name == "Cartesia call batch"
    assert CallBatchLink().xcom_key == "_link_CallBatchLink"
    assert "airflow_provider_cartesia.links.CallBatchLink" in get_provider_info()["extra-links"]


class PublishesBatch(CartesiaHookMixin, BaseOperator):
    """Any operator can carry the link: persist the batch's URL while it runs."""

    operator_extra_links = (CallBatchLink(),)

    def __init__(self, *, batch_id: str | None, cartesia_conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.cartesia_conn_id = cartesia_conn_id

    def execute(self, context: Any) -> None:
        if self.batch_id is not None:
            CallBatchLink.persist(context, self.hook, self.batch_id)


@pytest.mark.dagtest
def test_the_worker_stores_the_link_from_the_connections_dashboard_url(
    airflow_db: None, cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    dash = cartesia_connection_json(cartesia_simulator, dashboard_url="https://dash.example.com/")
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_DASH", dash)
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_NOKEY", json.dumps({**json.loads(dash), "password": None}))
    with DAG("cartesia_links", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        PublishesBatch(task_id="with_dashboard", batch_id="acb_123", cartesia_conn_id="cartesia_dash")
        PublishesBatch(task_id="no_batch_yet", batch_id=None, cartesia_conn_id="cartesia_dash")
        PublishesBatch(task_id="unusable_connection", batch_id="acb_123", cartesia_conn_id="cartesia_nokey")

    dr = run_dag_test(dag)

    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {t: str(ti.state) for t, ti in tis.items()} == dict.fromkeys(tis, "success")

    def link(task_id: str) -> Any:
        return tis[task_id].xcom_pull(task_ids=task_id, key="_link_CallBatchLink")

    url = "https://dash.example.com/agents/calls/batches/acb_123"
    assert tis["with_dashboard"].xcom_pull(task_ids="with_dashboard", key=CALL_BATCH_URL_XCOM_KEY) == url
    assert link("with_dashboard") == url
    assert link("no_batch_yet") == ""
    assert link("unusable_connection") == ""  # one log line at execute time, no URL, no link
    assert cartesia_simulator.requests == []  # building a link never calls the API


def test_get_link_only_reads_the_stored_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hook and no connection lookup in the API server: the link is whatever the task stored."""
    from airflow.sdk.execution_time import xcom

    stored = {CALL_BATCH_URL_XCOM_KEY: "https://dash.example.com/agents/calls/batches/acb_9"}
    monkeypatch.setattr(xcom.XCom, "get_value", staticmethod(lambda *, ti_key, key: stored.get(key)))
    operator = PublishesBatch(task_id="t", batch_id=None, cartesia_conn_id="no_such_connection")
    assert CallBatchLink().get_link(operator, ti_key=None) == stored[CALL_BATCH_URL_XCOM_KEY]  # type: ignore[arg-type]
    assert "hook" not in operator.__dict__
    stored.clear()
    assert CallBatchLink().get_link(operator, ti_key=None) == ""  # type: ignore[arg-type]
