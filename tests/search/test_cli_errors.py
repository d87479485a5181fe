"""Bad input to the command lines: one line naming the value and what is allowed, exit 2, nothing written."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import run_cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_error(completed, *needles: str) -> None:
    assert completed.returncode == 2, completed.stdout + completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr
    assert "Traceback" not in completed.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("value", "needles"), [
    ("0", ["0", "(0, 1]"]),
    ("1.5", ["1.5", "(0, 1]"]),
    ("-0.1", ["-0.1", "(0, 1]"]),
    ("abc", ["'abc'", "number"]),
])
def test_budget_out_of_range(tmp_path: Path, value, needles):
    _check_error(run_cli("automl_factor.search", f"--budget-params={value}", cwd=tmp_path), *needles)
    assert list(tmp_path.iterdir()) == []


def test_missing_space_file(tmp_path: Path):
    _check_error(run_cli("automl_factor.search", "--space", "nope.yaml", cwd=tmp_path), "nope.yaml", "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("text", "needles"), [
    ("groups:\n  - name: g\n    kinds: [lowrank, sparse]\n", ["groups.0.kinds.1", "sparse", "lowrank"]),
    ("max_epochs: -3\n", ["max_epochs", "-3"]),
    ("modle: resnet20\n", ["modle"]),
    ("groups: [unclosed\n", ["not valid YAML"]),
    ("model: resnet999\n", ["resnet999", "resnet20"]),
    ("groups:\n  - name: g\n    layers: ['nothing.*']\n", ["'g'", "matches no layer"]),
    ("data: {name: digits, val_fraction: 0}\n", ["data.val_fraction", "(0, 1)", "got 0", "test"]),
    ("latency: {device: tpu}\n", ["latency.device", "tpu", "cpu"]),
])
def test_malformed_space(tmp_path: Path, text, needles):
    (tmp_path / "bad.yaml").write_text(text)
    _check_error(run_cli("automl_factor.search", "--space", "bad.yaml", cwd=tmp_path), *needles)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def test_negative_checkpoint_interval(tmp_path: Path):
    _check_error(run_cli("automl_factor.search", "--checkpoint-every-s", "-1", cwd=tmp_path),
                 "--checkpoint-every-s", "-1", "greater than or equal to 0")
    assert list(tmp_path.iterdir()) == []


def test_unknown_sampler(tmp_path: Path):
    _check_error(run_cli("automl_factor.search", "--sampler", "bayes", cwd=tmp_path), "'bayes'", "tpe", "nsga2")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mlflow_uri(tmp_path: Path):
    uri = f"http://127.0.0.1:{_free_port()}"
    _check_error(run_cli("automl_factor.search", "--mlflow-uri", uri, cwd=tmp_path), uri, "unreachable")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_ray_address(tmp_path: Path):
    address = f"127.0.0.1:{_free_port()}"
    _check_error(run_cli("automl_factor.search", "--address", address, cwd=tmp_path), address, "unreachable")
    assert list(tmp_path.iterdir()) == []


def test_budget_too_small_for_the_model(tmp_path: Path):
    _check_error(run_cli("automl_factor.search", "--budget-params", "0.0001", cwd=tmp_path), "too small")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "needles"), [
    (["--rank-ratio", "0"], ["--rank-ratio", "(0, 1]", "0"]),
    (["--rank-ratio", "-1"], ["--rank-ratio", "-1"]),
    (["--model", "resnet999"], ["resnet999", "resnet20"]),
    (["--dataset", "mnist"], ["mnist", "digits"]),
    (["--dataset", "parquet:/no/such/folder"], ["/no/such/folder"]),
    (["--init", "xavier"], ["'xavier'", "spectral"]),
])
def test_train_cli_errors(tmp_path: Path, args, needles):
    _check_error(run_cli("automl_factor.train", *args, cwd=tmp_path), *needles)
    assert list(tmp_path.iterdir()) == []


def test_export_unknown_run(tmp_path: Path):
    completed = run_cli("automl_factor.export", "--run-id", "0123456789abcdef", "--out", "m.pt2",
                        "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    _check_error(completed, "0123456789abcdef", "not found")
    assert not (tmp_path / "m.pt2").exists()


@pytest.mark.parametrize("name", ["../escape", "/tmp/x"])
def test_name_must_be_plain(tmp_path: Path, name):
    _check_error(run_cli("automl_factor.search", "--name", name, cwd=tmp_path), repr(name), "letters, digits")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("storage", ["taken", "taken/runs"])
def test_storage_path_is_or_is_under_a_file(tmp_path: Path, storage):
    (tmp_path / "taken").write_text("not a folder")
    _check_error(run_cli("automl_factor.search", "--storage-path", storage, cwd=tmp_path), repr(storage), "is a file")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no mlflow.db: no parent run either


def _no_local_ray(monkeypatch, tmp_path_factory) -> None:
    """The environment of a machine without a Ray cluster (as Ray decides it), or skip."""
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray cluster runs on this machine; 'auto' would find it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path_factory.mktemp("ray")))  # no ray_current_cluster file


def test_address_auto_without_a_cluster(tmp_path: Path, monkeypatch, tmp_path_factory):
    _no_local_ray(monkeypatch, tmp_path_factory)
    _check_error(run_cli("automl_factor.search", "--address", "auto", cwd=tmp_path, timeout=120),
                 "'auto'", "no running Ray cluster", "ray start --head")
    assert list(tmp_path.iterdir()) == []


def test_address_auto_finds_an_unreachable_cluster(tmp_path: Path, monkeypatch, tmp_path_factory):
    _no_local_ray(monkeypatch, tmp_path_factory)
    address = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    _check_error(run_cli("automl_factor.search", "--address", "auto", cwd=tmp_path, timeout=120),
                 address, "RAY_ADDRESS", "unreachable")
    assert list(tmp_path.iterdir()) == []


def test_address_that_answers_http(tmp_path: Path):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        completed = run_cli("automl_factor.search", "--address", address, cwd=tmp_path, timeout=120)
    finally:
        server.shutdown()
    _check_error(completed, repr(address), "answers HTTP", "6379", "8265")
    assert list(tmp_path.iterdir()) == []


def test_unroutable_address_fails_quickly():
    import time

    from automl_factor.cli import UsageError
    from automl_factor.search.prepare import check_address

    start = time.monotonic()
    # Nothing answers there: the connection times out (5 s). Behind a transparent proxy (some sandboxes)
    # the connection opens and the proxy answers HTTP instead; refused either way.
    with pytest.raises(UsageError, match="unreachable|answers HTTP"):
        check_address("10.255.255.1:6379")
    assert time.monotonic() - start < 15


_HOLD_LOCK = """
import sys
from automl_factor.search.lock import search_lock
with search_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_one_search_per_name(tmp_path: Path):
    import socket as _socket
    import subprocess
    import sys

    from automl_factor.cli import UsageError
    from automl_factor.search.lock import search_lock

    run_uri = str(tmp_path / "runs" / "mine")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, run_uri], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"search 'mine' is running in another process "
                                             rf"\(pid {holder.pid} on {_socket.gethostname()}\)"):
            with search_lock(run_uri):
                pass
    finally:
        holder.communicate("", timeout=60)
    with search_lock(run_uri):  # released when the holder ended
        pass
    with search_lock("s3://bucket/runs/mine"):  # object stores: no lock, nothing touched
        pass


def _init_store(uri: str, barrier) -> None:
    from automl_factor.search.store import init_tracking_store

    barrier.wait()
    init_tracking_store(uri)


def test_tracking_store_set_up_once(tmp_path: Path):
    """Two searches starting at once on a fresh sqlite store: MLflow's migrations ran twice and one
    crashed ("duplicate column name: step")."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        uri = f"sqlite:///{tmp_path / f'mlflow{round_}.db'}"
        barrier = context.Barrier(2)
        processes = [context.Process(target=_init_store, args=(uri, barrier)) for _ in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        assert [process.exitcode for process in processes] == [0, 0], f"round {round_}"
