"""Shared pieces for the search tests: a tiny space and running the real command line."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TINY_SPACE = """
model: resnet20
model_kwargs: {width_multiplier: 0.5}
data: {name: digits, val_fraction: 0.2, train_subset: 400}
recipe: {lr: 0.05, batch_size: 64}
max_epochs: 3
budget_use: [0.3, 1.0]
groups:
  - name: early
    layers: ["layer1.*", "layer2.*"]
    kinds: [lowrank, deep]
    rank_fraction: [0.1, 1.0]
    inits: [spectral, default]
  - name: late
    layers: ["layer3.*"]
    kinds: [lowrank]
    layouts: [spatial, channel]
    regularizers: [fd, wd]
"""


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


def run_cli(module: str, *args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would, in ``cwd``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(command: list[str], url: str, what: str) -> subprocess.Popen:
    """Start ``command`` and wait until ``url`` answers; the process, to stop afterwards."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return process
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"{what} did not start")
            time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def mlflow_server_command(folder: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
            "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
