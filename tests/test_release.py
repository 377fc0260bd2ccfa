"""Release quality: the sdist and wheel build, and the wheel alone makes a working provider.

``python -m build`` makes the sdist, then the wheel *from the sdist* (so a file missing from the
sdist breaks the wheel here, not on a user's machine). The wheel is installed into a fresh, empty
venv with uv, the pinned ``constraints.txt`` and compiled bytecode; Airflow in that venv must find
the provider, its connection type, and every public class.

The build and install tests are marked ``e2e`` (real subprocesses, about 10 s, most of it uv
installing Airflow from its cache): select them with ``pytest tests/test_release.py`` or ``-m e2e``.
The documentation checks below them are instant: every error message the provider raises is in
docs/troubleshooting.md, and every relative link of the README and docs/ resolves.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from airflow_provider_cartesia import __all__ as PUBLIC_NAMES
from airflow_provider_cartesia.get_provider_info import VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "airflow_provider_cartesia"
STEP_TIMEOUT = 180


def _clean_env(airflow_home: Path) -> dict[str, str]:
    """The environment of a fresh shell: none of this test run's Airflow settings, venv or paths."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_", "AIRFLOW__")) and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env["AIRFLOW_HOME"] = str(airflow_home)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return env


def _run(args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc.stdout


@pytest.fixture(scope="module")
def uv() -> str:
    path = shutil.which("uv")
    if path is None:
        pytest.fail("uv is not on PATH; `make venv` installs it (pip install uv)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory, uv: str) -> dict[str, Path]:
    """``python -m build`` into a temp dir: the sdist, and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    env = _clean_env(out / "home")
    _run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(REPO_ROOT)], cwd=out, env=env)
    wheels = list(out.glob(f"{DIST_NAME}-{VERSION}-*.whl"))
    sdists = list(out.glob(f"{DIST_NAME}-{VERSION}.tar.gz"))
    assert len(wheels) == 1, f"expected one wheel of version {VERSION}, found {sorted(p.name for p in out.iterdir())}"
    assert len(sdists) == 1, f"expected one sdist of version {VERSION}, found {sorted(p.name for p in out.iterdir())}"
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def fresh_venv(
    tmp_path_factory: pytest.TempPathFactory, dists: dict[str, Path], uv: str
) -> tuple[Path, dict[str, str]]:
    """An empty venv with only the wheel (and its dependencies, pinned) installed; returns its bin dir."""
    root = tmp_path_factory.mktemp("fresh")
    env = _clean_env(root / "airflow-home")
    venv = root / "venv"
    _run([uv, "venv", "-q", "--python", sys.executable, str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    _run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            "--compile-bytecode",
            "-c",
            str(REPO_ROOT / "constraints.txt"),
            str(dists["wheel"]),
        ],
        cwd=root,
        env=env,
    )
    return venv / "bin", env


@pytest.mark.e2e
def test_sdist_holds_the_project_and_nothing_local(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for required in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "constraints.txt",
        f"{DIST_NAME}/py.typed",
        f"{DIST_NAME}/get_provider_info.py",
        "tests/conftest.py",
    ):
        assert required in names, f"{required} is missing from the sdist"
    assert any(n.startswith("example_dags/") and n.endswith(".py") for n in names), "no example DAG in the sdist"
    leaked = sorted(n for n in names if n.startswith((".venv/", ".demo/", ".tmp/", "dist/")) or "__pycache__" in n)
    assert not leaked, f"local files in the sdist: {leaked[:10]}"


@pytest.mark.e2e
def test_wheel_holds_the_package_and_the_entry_point(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        entry_points = whl.read(f"{DIST_NAME}-{VERSION}.dist-info/entry_points.txt").decode()
    assert f"{DIST_NAME}/py.typed" in names
    assert not any(n.startswith(("tests/", "example_dags/", "benchmarks/")) for n in names)
    assert "[apache_airflow_provider]" in entry_points
    assert "provider_info = airflow_provider_cartesia:get_provider_info" in entry_points


@pytest.mark.e2e
def test_airflow_in_a_fresh_venv_finds_the_provider(fresh_venv: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = fresh_venv
    providers = json.loads(_run([str(bin_dir / "airflow"), "providers", "list", "-o", "json"], cwd=tmp_path, env=env))
    ours = [p for p in providers if p["package_name"] == "airflow-provider-cartesia"]
    assert ours, f"`airflow providers list` does not show airflow-provider-cartesia: {providers}"
    assert ours[0]["version"] == VERSION

    hooks = json.loads(_run([str(bin_dir / "airflow"), "providers", "hooks", "-o", "json"], cwd=tmp_path, env=env))
    cartesia = [h for h in hooks if h.get("connection_type") == "cartesia"]
    assert cartesia, "the connection type `cartesia` is not registered"
    assert cartesia[0]["class"] == "airflow_provider_cartesia.hooks.cartesia.CartesiaHook"


@pytest.mark.e2e
def test_every_public_class_imports_from_the_installed_wheel(
    fresh_venv: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = fresh_venv
    script = (
        "import warnings\n"
        "warnings.filterwarnings('error', category=DeprecationWarning, module='airflow_provider_cartesia')\n"
        "import airflow_provider_cartesia as p, sys\n"
        "assert '/site-packages/' in p.__file__, p.__file__\n"
        "missing = [n for n in sys.argv[1:] if getattr(p, n, None) is None]\n"
        "print(p.__file__); sys.exit(f'not importable: {missing}' if missing else 0)\n"
    )
    out = _run([str(bin_dir / "python"), "-c", script, *PUBLIC_NAMES], cwd=tmp_path, env=env)
    assert "site-packages" in out


# -- documentation -------------------------------------------------------------------------------

_NOT_USER_FACING = {
    ("AttributeError", "has no attribute"),  # the package's lazy __getattr__, as any module's
    ("AssertionError", "unreachable: tenacity returns or re-raises"),  # a guard for the type checker
}


def _error_messages() -> list[tuple[str, str, str]]:
    """``(where, exception, longest literal fragment)`` of every exception the package constructs."""

    def name(func: ast.expr) -> str:
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""

    def literals(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        if isinstance(node, ast.BinOp):
            return literals(node.left) + literals(node.right)
        return []

    found = []
    package = REPO_ROOT / DIST_NAME
    for path in sorted(package.rglob("*.py")):
        if "testing" in path.relative_to(package).parts:
            continue  # the simulator's own errors are Cartesia's API errors, documented as such
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            kind = name(node.func)
            if not (kind.endswith(("Error", "Exception", "Timeout")) or kind == "_fail"):
                continue
            fragments = [re.sub(r"\s+", " ", t).strip(" .;:'\"(") for t in literals(node.args[0])]
            fragments = [f for f in fragments if len(f) >= 12]
            if fragments:
                found.append((f"{path.relative_to(REPO_ROOT)}:{node.lineno}", kind, max(fragments, key=len)))
    return found


def test_troubleshooting_names_every_error_message() -> None:
    doc = re.sub(r"\s+", " ", (REPO_ROOT / "docs" / "troubleshooting.md").read_text())
    messages = _error_messages()
    assert len(messages) > 50, "the scan found too few messages to be looking in the right place"
    missing = [m for m in messages if (m[1], m[2]) not in _NOT_USER_FACING and m[2] not in doc]
    assert not missing, "error messages missing from docs/troubleshooting.md:\n" + "\n".join(map(str, missing))


def test_readme_and_docs_links_resolve() -> None:
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not broken, broken
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", (REPO_ROOT / "README.md").read_text()))
    assert linked >= {p.name for p in (REPO_ROOT / "docs").glob("*.md")}, (
        "a page of docs/ is not linked from the README"
    )
