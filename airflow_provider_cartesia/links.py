"""The "Cartesia call batch" extra link: the batch's page on the Cartesia dashboard.

Any operator can carry it: it needs the batch id in the task's XCom under
:data:`CALL_BATCH_ID_XCOM_KEY` (write it with :meth:`CallBatchLink.persist` as soon as the id is
known, before waiting or deferring) and a ``cartesia_conn_id`` attribute naming the connection whose
``dashboard_url`` extra is the base URL (default ``https://play.cartesia.ai``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

from airflow_provider_cartesia.api import DEFAULT_CONN_ID, api_path, checked_dashboard_url
from airflow_provider_cartesia.exceptions import CartesiaError

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

CALL_BATCH_ID_XCOM_KEY = "cartesia_batch_id"
"""XCom key under which an operator publishes the id of the batch it works on."""
DASHBOARD_BATCH_PATH = "/agents/calls/batches/{batch_id}"
"""Path of a batch's page below the connection's ``dashboard_url``."""


def call_batch_url(dashboard_url: str, batch_id: str) -> str:
    """``{dashboard_url}/agents/calls/batches/{batch_id}``, the id validated and percent-encoded.

    The base must be https (or http to loopback): a ``javascript:`` or plain-HTTP link in the UI is refused.
    """
    return checked_dashboard_url(dashboard_url) + api_path(DASHBOARD_BATCH_PATH, batch_id=batch_id)


class CallBatchLink(BaseOperatorLink):
    """Operator extra link to the call batch's page on the Cartesia dashboard."""

    name = "Cartesia call batch"

    @staticmethod
    def persist(context: Context, batch_id: str) -> None:
        """Publish ``batch_id`` for the link (call it before the task waits or defers)."""
        context["ti"].xcom_push(key=CALL_BATCH_ID_XCOM_KEY, value=batch_id)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

        batch_id = XCom.get_value(ti_key=ti_key, key=CALL_BATCH_ID_XCOM_KEY)
        if not batch_id or not isinstance(batch_id, str):
            return ""
        # Reuse the operator's hook when it has one: its connection is already resolved.
        hook: Any = operator.__dict__.get("hook")
        if not isinstance(hook, CartesiaHook):
            hook = CartesiaHook(getattr(operator, "cartesia_conn_id", None) or DEFAULT_CONN_ID)
        try:
            return call_batch_url(hook.settings.dashboard_url, batch_id)
        except CartesiaError as exc:
            # An unusable connection or id already failed the task with a clear message; no link then.
            self.log_unavailable(operator, exc)
            return ""

    @staticmethod
    def log_unavailable(operator: BaseOperator, exc: CartesiaError) -> None:
        operator.log.info("No 'Cartesia call batch' link: %s", exc)
