"""Airflow discovers the provider: the metadata validates, imports no airflow, and names real classes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from airflow_provider_cartesia import get_provider_info
from airflow_provider_cartesia.testing import CartesiaSimulator

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


def test_provider_info_validates_against_airflows_schema():
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-provider-cartesia"


def test_entry_point_is_registered():
    (ep,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_cartesia")
    ]
    assert ep.value == "airflow_provider_cartesia:get_provider_info"
    assert ep.load() is get_provider_info


def test_provider_info_module_imports_no_airflow():
    code = (
        "import sys, airflow_provider_cartesia as p; p.get_provider_info(); "
        "heavy = ('airflow.', 'pydantic', 'requests', 'httpx'); "
        "bad = sorted(m for m in sys.modules if m == 'airflow' or m.startswith(heavy)); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_listed_module_and_class_imports():
    info = get_provider_info()
    modules = [
        m
        for key in ("hooks", "sensors", "triggers", "operators")
        for entry in info[key]
        for m in entry["python-modules"]
    ]
    modules += [t["python-module"] for t in info["transfers"]]
    for module in modules:
        importlib.import_module(module)
    for dotted in [*info["extra-links"], *(c["hook-class-name"] for c in info["connection-types"])]:
        module, _, name = dotted.rpartition(".")
        assert getattr(importlib.import_module(module), name)
    (conn,) = info["connection-types"]
    hook = importlib.import_module(conn["hook-class-name"].rpartition(".")[0]).CartesiaHook
    assert hook.conn_type == conn["connection-type"] == "cartesia"
    assert hook.default_conn_name == "cartesia_default"


def test_public_classes_load_lazily_from_the_package():
    import airflow_provider_cartesia as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError):
        pkg.NoSuchThing  # noqa: B018


def _airflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIRFLOW_BIN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.usefixtures("airflow_db")
def test_airflow_cli_discovers_the_provider_and_connection_type(cartesia_simulator: CartesiaSimulator):
    providers = _airflow("providers", "list", "-o", "json")
    assert providers.returncode == 0, providers.stderr[-2000:]
    names = [p["package_name"] for p in json.loads(providers.stdout[providers.stdout.index("[{") :])]
    assert "airflow-provider-cartesia" in names

    added = _airflow(
        "connections",
        "add",
        "cartesia_cli",
        "--conn-type",
        "cartesia",
        "--conn-host",
        cartesia_simulator.url,
        "--conn-password",
        cartesia_simulator.api_key,
    )
    assert added.returncode == 0, added.stderr[-2000:]
    shown = _airflow("connections", "get", "cartesia_cli", "-o", "json")
    assert shown.returncode == 0, shown.stdout + shown.stderr[-2000:]
    assert json.loads(shown.stdout[shown.stdout.index("[{") :])[0]["conn_type"] == "cartesia"

    enabled = {"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}
    tested = _airflow("connections", "test", "cartesia_cli", env=enabled)
    assert tested.returncode == 0 and "Connection success!" in tested.stdout, tested.stdout + tested.stderr[-2000:]

    _airflow(
        "connections",
        "add",
        "cartesia_cli_bad",
        "--conn-type",
        "cartesia",
        "--conn-host",
        cartesia_simulator.url,
        "--conn-password",
        "sk_car_wrong",
    )
    failed = _airflow("connections", "test", "cartesia_cli_bad", env=enabled)
    assert "refused the API key" in failed.stdout + failed.stderr
    assert cartesia_simulator.api_key not in tested.stdout + tested.stderr + failed.stdout + failed.stderr
