"""docs/testing.md shows real, running code: its DAG example is tests/examples/, byte for byte, and its
Python API example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "testing.md"


def _blocks() -> list[tuple[str, str]]:
    """``(marker or "", code)`` of every python block."""
    return [
        (marker or "", code)
        for marker, code in re.findall(r"(?:<!-- example: (\S+) -->\n)?```python\n(.*?)```", DOC.read_text(), re.S)
    ]


def test_the_dag_example_is_the_test_that_runs():
    examples = [(marker, code) for marker, code in _blocks() if marker]
    assert examples, "docs/testing.md lost its example marker"
    for marker, code in examples:
        assert code == (REPO_ROOT / marker).read_text(), f"docs/testing.md no longer shows {marker} as it is"


def test_the_python_api_example_runs(tmp_path: Path):
    code = next(code for _, code in _blocks() if "with CartesiaSimulator() as sim" in code)
    script = tmp_path / "python_api_example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "completed"
