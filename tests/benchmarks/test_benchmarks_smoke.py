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


@pytest.fixture
def search(monkeypatch):
    """benchmarks/search.py as a module, for its argument parsing and table formatting."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import search

    return search


def test_search_device_option(search):
    # --device cuda shares each GPU between the concurrent trials; GPUs without --device cuda is a usage error.
    args = search.parse_args(["--device", "cuda", "--concurrency", "4"])
    assert args.gpus_per_trial == 0.25
    assert search.parse_args(["--concurrency", "4"]).gpus_per_trial == 0.0
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search.py"), "--gpus-per-trial", "0.5"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--gpus-per-trial 0.5 needs --device cuda" in bad.stderr


def test_search_median_format(search):
    assert search._med([23, 28, 31]) == "28 [23–31]"
    assert search._med([0.45, 0.487, 0.468]) == "0.468 [0.450–0.487]"
    assert search._med([0.3], 100) == "30"
    assert search._med([float("nan")]) == "-"


@pytest.mark.integration
def test_compress_quick(tmp_path):
    # uniform, energy prior, the compress search (2 trials) and scratch, on digits, one ratio, one seed.
    run("compress.py", "--data", "digits", "--ratios", "0.3", "--out", str(tmp_path), timeout=900)
    table = (tmp_path / "table.md").read_text()
    for method in ("uniform", "energy", "search", "scratch"):
        assert f"| 0.3 | {method} |" in table
