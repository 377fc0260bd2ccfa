"""The export's OpenLineage branch, with apache-airflow-providers-openlineage installed (the test extra).

OpenLineage is optional for users; the test venvs always install it (``make test`` and every release
of ``make compat``), so this branch runs in CI. An import failure here is a failure, never a skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from warehouse_engines import CONN_ID, Engine, make_engine

from airflow_provider_cartesia.testing import CartesiaSimulator
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from make_engine(request.param, request, tmp_path)


def test_lineage_facets_name_the_batch_and_the_table(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=2, call_seconds=(5.0, 5.0), outcomes={"completed": 1})
    sim.clock.advance(3600)
    op = CallBatchToWarehouseOperator(
        task_id="export", batch_id=batch_id, warehouse_conn_id=CONN_ID, table=engine.table
    )
    op.execute({})

    lineage = op.get_openlineage_facets_on_complete(None)

    assert isinstance(lineage, OperatorLineage)
    assert all(isinstance(d, Dataset) for d in [*lineage.inputs, *lineage.outputs])
    host = sim.url.split("://")[1]
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        (f"cartesia://{host}", f"agents/calls/batches/{batch_id}")
    ]
    (output,) = lineage.outputs
    conn = json.loads(engine.conn_json)
    if engine.name == "sqlite":
        assert (output.namespace, output.name) == (f"sqlite://{conn['host']}", engine.table)
    else:
        namespace = f"postgres://{conn['host']}:{conn['port'] or 5432}"
        assert (output.namespace, output.name) == (namespace, f"{conn['schema']}.public.{engine.table}")
    assert engine.count(batch_id) == 2, "the lineage describes an export that happened"
