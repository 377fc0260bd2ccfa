"""``python -m airflow_provider_cartesia batches list|get|watch``: see :mod:`airflow_provider_cartesia.terminal`."""

from __future__ import annotations

import sys

from airflow_provider_cartesia.terminal import main

if __name__ == "__main__":
    sys.exit(main())
