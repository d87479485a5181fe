"""A local search's Ray runtime listens on 127.0.0.1 only (GCS, raylet, object manager, workers)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROBE = """
import subprocess
import ray
from automl_factor.search.run import start_ray

start_ray(None)
ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # start worker processes too
print(subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout)
ray.shutdown()
"""
RAY_PROCESSES = ("gcs_server", "raylet", "ray::", "python")


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_local_runtime_listens_on_loopback_only(tmp_path):
    listing = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout
    ours = [line.split() for line in listing.splitlines() if any(f'(("{name}' in line for name in RAY_PROCESSES)]
    names = " ".join(line[-1] for line in ours)
    assert "gcs_server" in names and "raylet" in names, listing
    local = [fields[3] for fields in ours]
    assert all(address.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for address in local), local
