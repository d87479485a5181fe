"""Helpers shared by the benchmark scripts (not part of the library)."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere, installed or not
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = str(REPO.parent / "shared" / "data" / "cifar10")


def data_spec(data: str) -> str:
    """``--data`` as a dataset spec: a folder of CIFAR-10 parquet files, or a spec such as ``digits``."""
    if data in ("digits", "cifar10", "cifar100") or ":" in data:
        return data
    return f"parquet:{Path(data).expanduser().resolve()}"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{platform.node()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1, default=str))


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
