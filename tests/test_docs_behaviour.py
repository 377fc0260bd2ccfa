"""What docs/connection.md and docs/troubleshooting.md promise about ids and base URLs, checked against the code."""

from __future__ import annotations

import pytest

from airflow_provider_cartesia.api import api_path, normalize_base_url
from airflow_provider_cartesia.exceptions import CartesiaConfigError, CartesiaInvalidIdError


@pytest.mark.parametrize("batch_id", ["acb_1..2", "acb..", "a.b-c_d"])
def test_an_id_containing_two_dots_stays_in_its_segment_and_is_accepted(batch_id: str) -> None:
    """``..`` inside an id cannot leave the path segment (it is not a segment of its own): it is sent."""
    assert api_path("/agents/calls/batches/{batch_id}", batch_id=batch_id) == f"/agents/calls/batches/{batch_id}"


@pytest.mark.parametrize("batch_id", [".", "..", "../x", "a/../b", "%2e%2e", ".hidden"])
def test_an_id_that_is_a_dot_segment_or_leaves_its_segment_is_refused(batch_id: str) -> None:
    with pytest.raises(CartesiaInvalidIdError, match="is not a valid Cartesia id"):
        api_path("/agents/calls/batches/{batch_id}", batch_id=batch_id)


@pytest.mark.parametrize(
    ("host", "port", "base_url"),
    [
        ("api.cartesia.ai", None, "https://api.cartesia.ai"),
        ("127.0.0.1:8089", None, "http://127.0.0.1:8089"),  # a scheme-less loopback host gets http://
        ("[::1]:8089", None, "http://[::1]:8089"),
        ("localhost", 8089, "http://localhost:8089"),  # a stored port is used when the host has none
        ("", 443, "https://api.cartesia.ai:443"),  # the port that keeps Airflow 3.3's UI Test button working
        ("https://proxy.internal:8443/cartesia", 443, "https://proxy.internal:8443/cartesia"),
    ],
)
def test_base_url_as_the_connection_docs_describe(host: str, port: int | None, base_url: str) -> None:
    assert normalize_base_url(host, port, "c") == base_url


def test_a_scheme_less_host_that_is_not_loopback_never_gets_plain_http() -> None:
    assert normalize_base_url("10.0.0.5:8089", None, "c") == "https://10.0.0.5:8089"
    with pytest.raises(CartesiaConfigError, match="refusing to send the API key over plain HTTP"):
        normalize_base_url("http://10.0.0.5:8089", None, "c")


def test_readme_install_names_the_wheel_the_build_writes() -> None:
    """README's wheel file name follows the version (tests/test_release.py builds and installs that wheel)."""
    from pathlib import Path

    from airflow_provider_cartesia.get_provider_info import VERSION

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    install = readme[readme.index("## Install") : readme.index("## The `cartesia` connection")]
    assert "not on PyPI yet" in install
    assert install.count(f"dist/airflow_provider_cartesia-{VERSION}-py3-none-any.whl") == 2
    assert "pip install airflow-provider-cartesia " in install  # kept for when it is published
