"""The "Cartesia call batch" extra link: the batch's page on the Cartesia dashboard.

The task stores the URL in XCom at execute time (:meth:`CallBatchLink.persist`); the API server only
reads it back, with no hook and no connection lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

from airflow_provider_cartesia.api import api_path, checked_dashboard_url
from airflow_provider_cartesia.compat import AirflowNotFoundException
from airflow_provider_cartesia.exceptions import CartesiaError

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

CALL_BATCH_ID_XCOM_KEY = "cartesia_batch_id"
"""XCom key of the batch id an operator publishes."""
CALL_BATCH_URL_XCOM_KEY = "cartesia_batch_url"
"""XCom key of the dashboard URL the link shows."""
DASHBOARD_BATCH_PATH = "/agents/calls/batches/{batch_id}"
"""Path of a batch's page below the connection's ``dashboard_url``."""


def call_batch_url(dashboard_url: str, batch_id: str) -> str:
    """``{dashboard_url}/agents/calls/batches/{batch_id}``: id percent-encoded, base https (or loopback http)."""
    return checked_dashboard_url(dashboard_url) + api_path(DASHBOARD_BATCH_PATH, batch_id=batch_id)


class CallBatchLink(BaseOperatorLink):
    """Operator extra link to the call batch's page on the Cartesia dashboard."""

    name = "Cartesia call batch"

    @staticmethod
    def persist(context: Context, hook: Any, batch_id: str) -> None:
        """Store the link's URL (``hook``'s ``dashboard_url``); an unusable connection: log why, store none."""
        try:
            url = call_batch_url(hook.settings.dashboard_url, batch_id)
        except (CartesiaError, AirflowNotFoundException) as exc:
            hook.log.info("No 'Cartesia call batch' link: %s", exc)
            return
        context["ti"].xcom_push(key=CALL_BATCH_URL_XCOM_KEY, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom  # only the worker's finalize and the API server need it

        url = XCom.get_value(ti_key=ti_key, key=CALL_BATCH_URL_XCOM_KEY)
        return url if isinstance(url, str) else ""
