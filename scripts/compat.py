"""The Airflow version matrix: resolve pins per release, and run the suites against each.

    python scripts/compat.py pin [RELEASE ...]   # regenerate compat/airflow-<release>.txt
    python scripts/compat.py run [RELEASE ...]   # build the wheel once, test it on each release

Airflow's constraint files are not reachable here, so each release is resolved the way its
constraints were: with uv's ``--exclude-newer`` a couple of days after the release (a plain
latest-of-everything resolve breaks older releases). The pins are committed; ``run`` installs
from them, so a run is repeatable. A release's venv is kept in ``.compat/`` and reused while its
pins are unchanged; the wheel is reinstalled every run.

``run`` tests the *installed wheel*: the suites run from a staging copy of tests/, example_dags/
and docs/ that has no ``airflow_provider_cartesia/`` beside it (conftest checks this). It exits
non-zero when any release fails, and names the releases that failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "compat"
WORK = ROOT / ".compat"

# Each release, and the day its resolve looks at PyPI (two days after the release).
RELEASES = {
    "3.0.0": "2025-04-24",
    "3.0.6": "2025-08-31",
    "3.1.0": "2025-09-27",
    "3.1.8": "2026-03-13",
    "3.2.0": "2026-04-09",
    "3.2.2": "2026-05-31",
}
FLOOR = "3.0.0"
# The real-services e2e (PostgreSQL metadata DB, api-server, scheduler, dag-processor, triggerer)
# runs on the floor release; the newest release gets it from `make test`.
E2E_RELEASES = {FLOOR}
# The unit and dag.test() suites. test_release.py checks the source tree and builds its own sdist
# against constraints.txt: it does not depend on the Airflow release and runs in `make test`.
SUITE = ["-m", "not e2e and not release", "--ignore=tests/test_release.py"]


def uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def pin_file(release: str) -> Path:
    return PINS / f"airflow-{release}.txt"


def pin(release: str, python: str) -> None:
    """Resolve the provider with its test extra on ``release`` as PyPI stood two days after it."""
    PINS.mkdir(exist_ok=True)
    cmd = [
        *uv(),
        "pip",
        "compile",
        "--quiet",
        "--python-version",
        python,
        "--exclude-newer",
        RELEASES[release],
        "--extra",
        "test",
        "--no-annotate",
        "--custom-compile-command",
        f"make compat-pins AIRFLOW={release}",
        "--output-file",
        str(pin_file(release)),
        "pyproject.toml",
        "-",
    ]
    subprocess.run(cmd, cwd=ROOT, input=f"apache-airflow=={release}\n", text=True, check=True)
    print(f"pinned {pin_file(release).relative_to(ROOT)}")


def build_wheel(run_dir: Path) -> Path:
    dist = run_dir / "dist"
    subprocess.run([*uv(), "build", "--quiet", "--wheel", "--out-dir", str(dist), str(ROOT)], check=True)
    (wheel,) = dist.glob("*.whl")
    return wheel


def stage(run_dir: Path) -> Path:
    """tests/, example_dags/, docs/ and the pytest config, without the package source beside them."""
    where = run_dir / "stage"
    where.mkdir(parents=True)
    for name in ("tests", "example_dags", "docs"):
        shutil.copytree(ROOT / name, where / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md", "constraints.txt"):
        shutil.copy2(ROOT / name, where / name)
    return where


def venv_for(release: str, python: str) -> Path:
    """The release's venv, installed from its pins; reused while the pins are unchanged."""
    venv = WORK / f"venv-{release}"
    pins = pin_file(release)
    if not pins.exists():
        raise SystemExit(f"{pins.relative_to(ROOT)} is missing: run `make compat-pins AIRFLOW={release}`")
    digest = hashlib.sha256(pins.read_bytes() + python.encode()).hexdigest()
    stamp = venv / ".pins-sha256"
    if stamp.exists() and stamp.read_text() == digest:
        return venv
    subprocess.run([*uv(), "venv", "--quiet", "--clear", "--python", python, str(venv)], check=True)
    python_bin = str(venv / "bin" / "python")
    subprocess.run(
        [*uv(), "pip", "install", "--quiet", "--compile-bytecode", "--python", python_bin, "-r", str(pins)], check=True
    )
    stamp.write_text(digest)
    return venv


def install_wheel(venv: Path, wheel: Path, release: str) -> None:
    """The wheel over the pinned set; a dependency missing from stale pins resolves at the release's date."""
    cmd = [*uv(), "pip", "install", "--quiet", "--compile-bytecode", "--reinstall-package", "airflow-provider-cartesia"]
    cmd += ["--python", str(venv / "bin" / "python"), "--exclude-newer", RELEASES[release]]
    subprocess.run([*cmd, "-c", str(pin_file(release)), f"{wheel}[test]"], check=True)


def pytest(venv: Path, where: Path, release: str, args: list[str]) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "CARTESIA_TEST_AIRFLOW_HOME"}
    env["CARTESIA_TEST_INSTALLED"] = "1"
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    print(f"[{release}] {' '.join(cmd[1:])}", flush=True)
    code = subprocess.run(cmd, cwd=where, env=env).returncode
    if code == 5:
        print(f"[{release}] pytest collected no test: that is a failure here", flush=True)
    return code == 0


def run_release(release: str, wheel: Path, where: Path, python: str, extra: list[str]) -> bool:
    start = time.monotonic()
    venv = venv_for(release, python)
    install_wheel(venv, wheel, release)
    print(f"[{release}] venv ready in {time.monotonic() - start:.0f} s", flush=True)
    ok = pytest(venv, where, release, [*SUITE, *extra])
    if ok and release in E2E_RELEASES:
        ok = pytest(venv, where, release, ["tests/test_e2e.py", *extra])
    print(f"[{release}] {'passed' if ok else 'FAILED'} in {time.monotonic() - start:.0f} s", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["pin", "run"])
    parser.add_argument("releases", nargs="*", help=f"default: all of {', '.join(RELEASES)}")
    parser.add_argument("--python", default="3.11", help="Python of the venvs (default 3.11)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, space-separated")
    opts = parser.parse_args()
    unknown = [r for r in opts.releases if r not in RELEASES]
    if unknown:
        parser.error(f"unknown release {', '.join(unknown)}: choose from {', '.join(RELEASES)}")
    releases = opts.releases or list(RELEASES)
    if opts.command == "pin":
        for release in releases:
            pin(release, opts.python)
        return 0
    start = time.monotonic()
    WORK.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=WORK) as run_dir:
        wheel = build_wheel(Path(run_dir))
        where = stage(Path(run_dir))
        results = {r: run_release(r, wheel, where, opts.python, opts.pytest_args.split()) for r in releases}
    failed = [r for r, ok in results.items() if not ok]
    summary = ", ".join(f"{r} {'ok' if ok else 'FAILED'}" for r, ok in results.items())
    print(f"compat: {summary} ({time.monotonic() - start:.0f} s)")
    if failed:
        print(f"compat: FAILED on Airflow {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
