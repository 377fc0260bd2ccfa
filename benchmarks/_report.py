"""Shared by the benchmarks: write one benchmark's figures into its own section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Each section below is written by one script in `benchmarks/` (the command is given with it) and
replaced whole when that script runs again. Figures come from a shared 2-core machine, so each
benchmark compares its contenders side by side in the same run and reports ratios.
"""


def machine() -> str:
    """One line describing where the figures were measured."""
    import os

    return f"Python {sys.version.split()[0]} on {platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} start -->\n## {title}\n\n"
        f"Command: `{command}`  \nMeasured: {stamp}; {machine()}.\n\n{body.strip()}\n"
        f"<!-- bench:{name} end -->\n"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} start -->.*?<!-- bench:{re.escape(name)} end -->\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)
    print(f"wrote section '{name}' of {DOC}")
