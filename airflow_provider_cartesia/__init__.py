"""Apache Airflow provider for Cartesia voice-agent call batches (public classes load on first access)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_cartesia.api import VERSION
from airflow_provider_cartesia.get_provider_info import get_provider_info

__version__ = VERSION

_LAZY = {
    "CartesiaHook": "airflow_provider_cartesia.hooks.cartesia",
    "CallBatchSensor": "airflow_provider_cartesia.sensors.call_batch",
    "CallBatchTrigger": "airflow_provider_cartesia.triggers.call_batch",
    "CallBatchToWarehouseOperator": "airflow_provider_cartesia.transfers.call_batch_to_warehouse",
    "CreateCallBatchOperator": "airflow_provider_cartesia.operators.call_batch",
    "CancelCallBatchOperator": "airflow_provider_cartesia.operators.call_batch",
    "CallBatchLink": "airflow_provider_cartesia.links",
    "CallBatch": "airflow_provider_cartesia.models",
    "CallBatchRecipient": "airflow_provider_cartesia.models",
    "AgentCall": "airflow_provider_cartesia.models",
    "CartesiaError": "airflow_provider_cartesia.exceptions",
    "CartesiaAPIError": "airflow_provider_cartesia.exceptions",
}

__all__ = [
    "AgentCall",
    "CallBatch",
    "CallBatchLink",
    "CallBatchRecipient",
    "CallBatchSensor",
    "CallBatchToWarehouseOperator",
    "CallBatchTrigger",
    "CancelCallBatchOperator",
    "CartesiaAPIError",
    "CartesiaError",
    "CartesiaHook",
    "CreateCallBatchOperator",
    "__version__",
    "get_provider_info",
]

if TYPE_CHECKING:
    from airflow_provider_cartesia.exceptions import CartesiaAPIError, CartesiaError
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import AgentCall, CallBatch, CallBatchRecipient


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
