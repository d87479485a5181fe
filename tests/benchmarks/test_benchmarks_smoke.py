"""Each benchmark script runs end to end with --quick on tiny data, so it cannot rot.

No speed or accuracy is asserted: only that the script finishes and writes its table and plot.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_layers_quick(tmp_path):
    run("layers.py", "--out", str(tmp_path), "--device", "cpu")
    table = (tmp_path / "table.md").read_text()
    assert "realized/FLOP" in table and "FD overhead" in table
    assert (tmp_path / "speedup.png").stat().st_size > 0


def test_paper_quick(tmp_path):
    run("paper.py", "--data", "digits", "--out", str(tmp_path), "--device", "cpu")
    table = (tmp_path / "table.md").read_text()
    for row in ("low-rank + SI + FD", "pruning", "Figure 2", "Overcomplete"):
        assert row in table
    assert (tmp_path / "figure2.png").stat().st_size > 0


@pytest.mark.integration
def test_search_quick(tmp_path):
    # One search (the CLI default) through the real command line on digits, 2 trials of 1 epoch.
    run("search.py", "--data", "digits", "--out", str(tmp_path), "--methods", "ours", timeout=900)
    table = (tmp_path / "table.md").read_text()
    assert "| ours | 0 | 2 |" in table and "Overhead" in table
    assert (tmp_path / "hypervolume.png").stat().st_size > 0
