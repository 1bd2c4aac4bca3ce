"""The doit task factory: loading the graph must stay cheap (see docs/architecture.md)."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO

HEAVY = ("requests", "urllib3", "tomlkit", "PySquashfsImage", "git", "zstandard", "yaml")


def test_graph_loads_without_the_heavy_modules() -> None:
    """Every `doit list` and no-op build imports tasks; what only actions need is imported
    inside them, so generating the graph for the repo's recipes pulls in none of these."""
    code = ("import sys; from pathlib import Path; from sysext_bakery import tasks; "
            f"list(tasks.generate(Path({str(REPO)!r}), [])); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
