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
