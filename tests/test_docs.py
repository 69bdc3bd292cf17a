"""Every tutorial under docs/tutorials runs from start to end.

The runs carry the ``docs`` marker, which the default test run deselects: the docs build executes every
tutorial (CI runs it, and a cell that raises fails it). ``python -m pytest -m docs`` runs them here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def test_tutorials_exist():
    assert len(TUTORIALS) >= 4


@pytest.mark.docs
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    # run_path from "-c": like a notebook kernel, the tutorial is not a __main__ file that process-pool
    # workers would re-execute
    runner = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__tutorial__')"
    done = subprocess.run(
        [sys.executable, "-c", runner, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
