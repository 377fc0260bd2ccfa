"""The same names on every supported Airflow release (3.0 to 3.3), so no other module imports by release.

From 3.2, ``BaseHook``, ``conf``, ``CronTriggerTimetable`` come from ``airflow.sdk`` and the exceptions
from ``airflow.sdk.exceptions``; before, from ``airflow.configuration``, ``airflow.exceptions`` and
``airflow.timetables.trigger``. ``BaseHook`` is the SDK's on 3.1 and ``airflow.hooks.base``'s on 3.0, given
an ``aget_connection`` that runs the sync lookup in a worker thread where it is missing (3.0) or fails
outside Airflow's own processes (3.1.0). ``asset_state_store(trigger)`` is 3.3's store, ``None`` before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

_RELEASE = Version(Version(AIRFLOW_VERSION).base_version)
AIRFLOW_V_3_1_PLUS = Version("3.1.0") <= _RELEASE
AIRFLOW_V_3_2_PLUS = Version("3.2.0") <= _RELEASE

if TYPE_CHECKING or AIRFLOW_V_3_2_PLUS:
    from airflow.sdk import conf
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
else:
    from airflow.configuration import conf
    from airflow.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )

if TYPE_CHECKING:
    from airflow.sdk import BaseHook, CronTriggerTimetable


def __getattr__(name: str) -> Any:
    """``BaseHook`` and ``CronTriggerTimetable``, imported on first use (operators need neither)."""
    if name == "BaseHook":
        value = _base_hook()
    elif name == "CronTriggerTimetable":
        if AIRFLOW_V_3_2_PLUS:
            from airflow.sdk import CronTriggerTimetable as value
        else:
            from airflow.timetables.trigger import CronTriggerTimetable as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _base_hook() -> type:
    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk import BaseHook

        return BaseHook
    from asgiref.sync import sync_to_async

    if AIRFLOW_V_3_1_PLUS:
        from airflow.sdk import BaseHook as SdkBaseHook

        class BaseHook31(SdkBaseHook):
            """3.1.0's lookups fail without a supervisor channel (``dag.test()``)."""

            @classmethod
            def get_connection(cls, conn_id: str) -> Any:
                try:
                    return super().get_connection(conn_id)
                except ImportError as exc:  # cannot import name 'SUPERVISOR_COMMS' (3.1.0)
                    raise AirflowNotFoundException(
                        f"Connection '{conn_id}' is not in the environment or a secrets backend, and Airflow "
                        "3.1.0 cannot read the metadata database outside a worker or triggerer: set "
                        f"AIRFLOW_CONN_{conn_id.upper()}, or use a later 3.1 release"
                    ) from exc

            @classmethod
            async def aget_connection(cls, conn_id: str) -> Any:
                try:
                    return await super().aget_connection(conn_id)
                except ImportError:  # cannot import name 'SUPERVISOR_COMMS' (3.1.0)
                    return await sync_to_async(SdkBaseHook.get_connection)(conn_id)

        return BaseHook31

    from airflow.hooks.base import BaseHook as CoreBaseHook  # type: ignore[attr-defined]  # 3.0 only

    class BaseHook30(CoreBaseHook):
        """Airflow 3.0's BaseHook with the async connection lookup of 3.1."""

        @classmethod
        async def aget_connection(cls, conn_id: str) -> Any:
            return await sync_to_async(CoreBaseHook.get_connection)(conn_id)

    return BaseHook30


def asset_state_store(trigger: Any) -> Any | None:
    """The trigger's asset state store (Airflow 3.3); ``None`` before 3.3 or when the triggerer set none."""
    return getattr(trigger, "asset_state_store", None)


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "CronTriggerTimetable",
    "TaskDeferred",
    "asset_state_store",
    "conf",
]
