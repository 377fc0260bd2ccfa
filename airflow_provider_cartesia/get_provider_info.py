"""Provider metadata for Airflow's providers manager, imported on every CLI call: no airflow, nothing heavy."""

from __future__ import annotations

from typing import Any

from airflow_provider_cartesia.api import (
    CONN_TYPE,
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_DASHBOARD_URL,
    SUPPORTED_API_VERSIONS,
    VERSION,
)

PACKAGE_NAME = "airflow-provider-cartesia"

_PKG = "airflow_provider_cartesia"


def get_provider_info() -> dict[str, Any]:
    """Return the provider description that Airflow validates against ``provider_info.schema.json``."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Cartesia",
        "description": "Wait for, export, start and cancel `Cartesia <https://cartesia.ai>`__ voice-agent "
        "call batches (outbound calling campaigns).",
        "versions": [VERSION],
        "integrations": [
            {
                "integration-name": "Cartesia",
                "external-doc-url": "https://docs.cartesia.ai/line/integrations/telephony/batch-calling",
                "tags": ["service"],
            }
        ],
        "hooks": _modules("hooks.cartesia"),
        "sensors": _modules("sensors.call_batch"),
        "triggers": _modules("triggers.call_batch", "triggers.call_batch_event"),
        "operators": _modules("operators.call_batch"),
        "transfers": [
            {
                "source-integration-name": "Cartesia",
                "target-integration-name": "Common SQL",
                "python-module": f"{_PKG}.transfers.call_batch_to_warehouse",
            }
        ],
        "extra-links": [f"{_PKG}.links.CallBatchLink"],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": f"{_PKG}.hooks.cartesia.CartesiaHook",
                "hook-name": "Cartesia",
                "ui-field-behaviour": {
                    # The port goes into the Base URL. (Airflow 3 always shows the raw Extra box.)
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": DEFAULT_BASE_URL, "password": "sk_car_..."},
                },
                "conn-fields": {
                    "api_version": {
                        "label": "API version",
                        "description": "Cartesia-Version header sent with every request.",
                        "schema": {
                            "type": "string",
                            "default": DEFAULT_API_VERSION,
                            "enum": list(SUPPORTED_API_VERSIONS),
                        },
                    },
                    "timeout": {
                        "label": "Read timeout (seconds)",
                        "description": "Seconds to wait for a response. A 5,000-recipient batch is a few MB.",
                        "schema": {"type": ["number", "null"], "minimum": 1, "default": 60},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries of a request that failed with 408, 429, 5xx or a network "
                        "error. Creating a batch is never retried once it may have reached Cartesia.",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "default": 4},
                    },
                    "dashboard_url": {
                        "label": "Dashboard URL",
                        "description": "Base URL of the Cartesia dashboard, for the 'Cartesia call batch' link.",
                        "schema": {"type": ["string", "null"], "default": DEFAULT_DASHBOARD_URL},
                    },
                },
            }
        ],
    }


def _modules(*names: str) -> list[dict[str, Any]]:
    return [{"integration-name": "Cartesia", "python-modules": [f"{_PKG}.{name}" for name in names]}]
