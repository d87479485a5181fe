"""The launch files, checked offline: Ray's own validation of the cluster launcher YAMLs, the fields KubeRay
requires of the RayJob, its entrypoint run under /bin/sh and parsed by the search's own parser (a retry
resumes), the MLflow start script, and every `pip install` pinned by a constraints file."""
from __future__ import annotations

import copy
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from automl_factor.search.__main__ import parse_args

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
LAUNCHERS = {"aws-gpu.yaml": "s3://", "gcp-gpu.yaml": "gs://"}  # file -> the object storage it documents
RAYJOB = LAUNCH / "kuberay-rayjob.yaml"
START_MLFLOW = LAUNCH / "start-mlflow.sh"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_normalize(name)] = version.strip()
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _prepared(path: Path) -> dict:
    """Ray's own offline checks, as `ray up` runs them before touching the cloud."""
    config = prepare_config(copy.deepcopy(yaml.safe_load(path.read_text())))
    validate_config(config)
    return config


# --- the cluster launcher YAMLs ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_ray_validation(name):
    _prepared(LAUNCH / name)


@pytest.mark.parametrize(("name", "scheme"), LAUNCHERS.items())
def test_launcher_cpu_head_autoscaled_gpu_workers(name, scheme):
    path = LAUNCH / name
    config = _prepared(path)
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), head["resources"]
    workers = {key: node for key, node in node_types.items() if key != config["head_node_type"]}
    gpu_workers = [node for node in workers.values() if node["resources"].get("GPU", 0) >= 1]
    assert gpu_workers, f"no worker type declares a GPU in its resources: {workers}"
    for node in gpu_workers:
        assert node["min_workers"] == 0 < node["max_workers"] <= config["max_workers"], node
    ray_pin, image = _pins(ROOT / "constraints.txt")["ray"], config.get("docker", {}).get("image", "")
    assert image.startswith(f"rayproject/ray:{ray_pin}-"), f"nodes must run the pinned ray=={ray_pin}: {image!r}"
    assert f"--storage-path {scheme}" in path.read_text(), f"{name} documents no --storage-path {scheme}..."


@pytest.mark.parametrize(("name", "scheme"), LAUNCHERS.items())
def test_launcher_installs_the_checkout_and_starts_mlflow_on_the_head(name, scheme):
    config = _prepared(LAUNCH / name)
    assert config["file_mounts"].get("~/automl-factor") == "."
    assert "cd ~/automl-factor && pip install -c constraints.txt -e ." in config["setup_commands"]
    start = "\n".join(config["head_start_ray_commands"])
    assert re.search(r"ray start --head .*--dashboard-host=127\.0\.0\.1", start), start
    mlflow = [shlex.split(command, comments=True) for command in config["head_start_ray_commands"]
              if "start-mlflow.sh" in command]
    assert len(mlflow) == 1, start
    script, artifacts = mlflow[0][-2:]
    assert script == "~/automl-factor/launch/start-mlflow.sh" and artifacts.startswith(scheme), mlflow[0]
    assert "start-mlflow.sh" not in " ".join(config["worker_start_ray_commands"])


def test_start_mlflow_script_is_valid_bash_and_never_binds_all_interfaces():
    subprocess.run(["bash", "-n", str(START_MLFLOW)], check=True)
    text = "\n".join(line for line in START_MLFLOW.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "0.0.0.0" not in text
    assert re.search(r'mlflow server --host "\$ip"', text), "the server must bind the head's private IP"


@pytest.mark.integration
def test_start_mlflow_script_serves_on_the_private_ip(tmp_path):
    """Runs the script as the head would (a fake HOME): a healthy server on the address it wrote."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HOME": str(tmp_path), "MLFLOW_PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(START_MLFLOW), (tmp_path / "artifacts").as_uri()], env=env, check=True,
                   capture_output=True, timeout=120)
    pid = int((tmp_path / "mlflow" / "pid").read_text())
    try:
        uri = (tmp_path / "mlflow" / "uri").read_text().strip()
        assert uri.endswith(f":{port}") and not uri.startswith(("http://0.0.0.0", "http://localhost")), uri
        deadline = time.monotonic() + 90
        while True:
            try:
                assert urllib.request.urlopen(f"{uri}/health", timeout=5).read().strip() == b"OK"
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "mlflow" / "server.log").read_text()[-2000:]
                time.sleep(1)
        if not uri.startswith("http://127."):  # bound to one address, so loopback is refused
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert (tmp_path / "mlflow" / "mlflow.db").exists()
    finally:
        os.killpg(pid, 15)


# --- the KubeRay RayJob -----------------------------------------------------------------------------------

def _containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers, group
    for container in containers:
        assert container.get("name") and container.get("image"), container
        limits = container["resources"]["limits"]
        assert "cpu" in limits and "memory" in limits, container
    return containers


def _check_rayjob_fields(job: dict) -> None:
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("backoffLimit", 0) >= 1, "a failed job should be retried (and resume)"
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    groups = [head, *cluster["workerGroupSpecs"]]
    for group in groups:  # KubeRay's CRD: rayStartParams is a map of strings
        assert all(isinstance(value, str) for value in group["rayStartParams"].values()), group["rayStartParams"]
        _containers(group)
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") != "127.0.0.1", (
        "KubeRay submits the job through the head's dashboard service: it must listen on the pod network")
    gpu_groups = []
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], group
        if any("nvidia.com/gpu" in container["resources"]["limits"] for container in _containers(group)):
            gpu_groups.append(group)
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    if any(group["minReplicas"] < group["maxReplicas"] for group in gpu_groups):
        assert cluster.get("enableInTreeAutoscaling") is True, "autoscaled GPU workers need the Ray autoscaler"


def test_rayjob_has_the_fields_kuberay_requires():
    _check_rayjob_fields(yaml.safe_load(RAYJOB.read_text()))


def _run_entrypoint(entrypoint: str, tmp_path: Path, storage: str) -> list[str]:
    """The entrypoint under /bin/sh (as Ray's job supervisor runs it), `python -m ...` replaced by a recorder;
    every other python (the resume test) is the real one. Returns the search's arguments."""
    stubs, record = tmp_path / "stubs", tmp_path / "argv"
    stubs.mkdir(exist_ok=True)
    stub = stubs / "python"
    stub.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then shift; printf "%s\\n" "$@" > "{record}"; exit 0; fi\n'
                    f'exec "{sys.executable}" "$@"\n')
    stub.chmod(0o755)
    record.unlink(missing_ok=True)
    env = {**os.environ, "STORAGE": storage, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    completed = subprocess.run(["/bin/sh", "-c", entrypoint], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    argv = record.read_text().splitlines()
    assert argv[0] == "automl_factor.search", argv
    return argv[1:]


def test_rayjob_entrypoint_parses_and_a_retry_resumes(tmp_path):
    entrypoint = yaml.safe_load(RAYJOB.read_text())["spec"]["entrypoint"]
    storage = str(tmp_path / "runs")
    first = _run_entrypoint(entrypoint, tmp_path, storage)
    args = parse_args(first)  # exits 2 on an unknown flag or a bad value
    assert not args.resume and args.name and args.storage_path == storage
    assert args.address == "auto" and args.gpus_per_trial > 0 and args.mlflow_uri.startswith("http")
    workdir = re.search(r"^WORKDIR\s+(\S+)", (LAUNCH / "Dockerfile").read_text(), re.M).group(1)
    space = Path(args.space)
    assert space.is_relative_to(workdir) and (ROOT / space.relative_to(workdir)).is_file(), args.space

    (tmp_path / "runs" / args.name).mkdir(parents=True)
    (tmp_path / "runs" / args.name / "search.json").write_text("{}")  # what the first attempt leaves behind
    retry = _run_entrypoint(entrypoint, tmp_path, storage)
    assert parse_args(retry).resume
    assert [arg for arg in retry if arg != "--resume"] == first, "a retry must pass the same settings"


def test_rayjob_default_storage_is_object_storage():
    entrypoint = yaml.safe_load(RAYJOB.read_text())["spec"]["entrypoint"]
    default = re.search(r"STORAGE=\$\{STORAGE:-([^}]+)\}", entrypoint)
    assert default and default.group(1).startswith(("s3://", "gs://")), entrypoint


# --- pinned installs --------------------------------------------------------------------------------------

def _commands_of(path: Path) -> list[str]:
    """Shell text of a launch file: its commands after Ray's defaults are merged in, or the whole file."""
    if path.name in LAUNCHERS:
        config = _prepared(path)
        commands = [command for key, value in config.items() if key.endswith("_commands") for command in value]
        for node in config["available_node_types"].values():
            commands += [c for key, value in node.items() if key.endswith("_commands") for c in value]
        return commands
    return [path.read_text().replace("\\\n", " ")]


def _pip_installs(text: str) -> list[list[str]]:
    installs = []
    for match in re.finditer(r"pip3? install\b([^\n;&|]*)", text):
        installs.append(shlex.split(match.group(1), comments=True))
    return installs


def _check_pinned(path: Path) -> int:
    installs = [tokens for text in _commands_of(path) for tokens in _pip_installs(text)]
    for tokens in installs:
        constraints, requirements = [], []
        rest = iter(tokens)
        for token in rest:
            if token in ("-c", "--constraint"):
                constraints.append(next(rest))
            elif token in ("-e", "--editable"):
                assert next(rest) == ".", f"{path.name}: only the checkout installs editable: {tokens}"
            elif token in ("-r", "--requirement", "--index-url", "-i", "--extra-index-url", "-f", "--find-links"):
                pytest.fail(f"{path.name}: unpinned source {token} in pip install {' '.join(tokens)}")
            elif not token.startswith("-"):
                requirements.append(token)
        assert "constraints.txt" in constraints, f"{path.name}: pip install {' '.join(tokens)} lacks -c constraints.txt"
        pins = {}
        for file in constraints:
            pins.update(_pins(ROOT / file))
        for requirement in requirements:
            assert "@" not in requirement and "://" not in requirement, f"{path.name}: {requirement}"
            name = _normalize(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
            assert name in pins, f"{path.name}: {requirement} is pinned by none of {constraints}"
    return len(installs)


def test_every_pip_install_in_the_launch_files_is_pinned():
    counts = {path.name: _check_pinned(path) for path in sorted(LAUNCH.iterdir()) if path.is_file()}
    for name in [*LAUNCHERS, "Dockerfile"]:
        assert counts[name] >= 1, counts  # the project is installed somewhere in each
