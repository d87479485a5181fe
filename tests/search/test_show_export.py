"""``show``, ``export`` (by trial id, by pick, ONNX, model card, refusals) and ``train --out``, end
to end on one small real search; the selection rules (best under a constraint, knee) on made-up rows."""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from automl_factor import cli
from automl_factor.search.pick import Constraints, PickError, best, export_command, knee, open_search
from conftest import TINY_SPACE as SPACE
from conftest import run_cli

NUM_SAMPLES = 8
integration = pytest.mark.integration


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> Path:
    """One tiny search (MO-ASHA halving hard, so some trials stop early); returns its working folder."""
    folder = tmp_path_factory.mktemp("show_export")
    (folder / "tiny.yaml").write_text(SPACE)
    completed = run_cli("automl_factor.search", "--budget-params", "0.2", "--space", "tiny.yaml", "--num-samples",
                        str(NUM_SAMPLES), "--reduction-factor", "2", "--name", "it", "--cpus-per-trial", "1",
                        "--seed", "3", cwd=folder)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return folder


def rows_of(folder: Path, name: str = "it") -> list[dict]:
    return pq.read_table(folder / "automl_runs" / name / "trials.parquet").to_pylist()


def run_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a CLI's ``main`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(argv) or 0
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def show(folder: Path, *args: str, capsys) -> tuple[int, str, str]:
    from automl_factor.show import main
    return run_main(main, ["--storage-path", str(folder / "automl_runs"), *args], capsys)


def export(folder: Path, *args: str, capsys) -> tuple[int, str, str]:
    from automl_factor.export import main
    return run_main(main, ["--storage-path", str(folder / "automl_runs"), *args], capsys)


def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    from automl_factor.train import load
    test = load("digits").test
    return test.images.float() / 255, test.labels


def picked_trial(stdout: str) -> str:
    return re.search(r"^→ .*?: trial (\w+) ", stdout, re.MULTILINE).group(1)


# show ----------------------------------------------------------------------------------------------


@integration
def test_show_lists_the_front_one_row_per_model_with_a_command_that_exports_it(search, monkeypatch):
    rows = rows_of(search)
    front = [row for row in rows if row["status"] == "complete" and row["pareto"]]
    assert front, "a finished search has a front"
    completed = run_cli("automl_factor.show", cwd=search)  # no name: the latest search under ./automl_runs
    monkeypatch.chdir(search)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("search it ") and f"{NUM_SAMPLES} of {NUM_SAMPLES} trials done" in lines[0]
    table = [line for line in lines if "automl_factor.export" in line]
    assert len(table) == len(front)
    commands = {row["trial_id"]: export_command(open_search("./automl_runs", "it"), row) for row in front}
    for trial_id, command in commands.items():
        assert sum(line.endswith(command) and trial_id in line for line in table) == 1
        assert f"--trial {trial_id} " in command
    assert not any(row["trial_id"] in completed.stdout for row in rows if row["status"] != "complete")

    # The printed command, run as printed (from the same folder), exports that model.
    exported = subprocess.run(shlex.split(commands[front[0]["trial_id"]]), cwd=search, capture_output=True,
                              text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (search / f"it-{front[0]['trial_id']}.pt2").is_file()


@integration
def test_show_all_lists_every_trial_with_its_status(search, capsys):
    code, out, _ = show(search, "it", "--all", capsys=capsys)
    assert code == 0
    for row in rows_of(search):
        assert row["trial_id"] in out
    assert "stopped early (1/3 epochs)" in out or "stopped early (2/3 epochs)" in out


@integration
def test_show_best_under_constraints_matches_the_table(search, capsys):
    complete = [row for row in rows_of(search) if row["status"] == "complete"]
    limit = sorted(row["params_ratio"] for row in complete)[len(complete) // 2]
    code, out, _ = show(search, "it", "--max-params", str(limit), capsys=capsys)
    assert code == 0
    expected = max((row for row in complete if row["params_ratio"] <= limit), key=lambda row: row["accuracy"])
    assert picked_trial(out) == expected["trial_id"]
    assert f"params_ratio <= {limit:g}" in out

    floor = min(row["accuracy"] for row in complete)
    code, out, _ = show(search, "it", "--min-accuracy", str(floor), capsys=capsys)
    assert code == 0
    smallest = min(complete, key=lambda row: (row["params_ratio"], -row["accuracy"]))
    assert picked_trial(out) == smallest["trial_id"]


@integration
def test_show_knee_is_a_front_model(search, capsys):
    code, out, _ = show(search, "it", "--knee", capsys=capsys)
    assert code == 0
    front = {row["trial_id"] for row in rows_of(search) if row["pareto"]}
    assert picked_trial(out) in front
    assert "knee of the accuracy-params front" in out


@integration
@pytest.mark.parametrize("args, expected", [
    (["nope"], "no search named 'nope'"),
    (["it", "--max-params", "0.000001"], "--max-params 1e-06: no complete model"),
    (["it", "--min-accuracy", "1"], "--min-accuracy 1: no complete model"),
    (["it", "--max-params", "abc"], "--max-params: must be a number > 0, got 'abc'"),
    (["it", "--min-accuracy", "1.5"], "--min-accuracy is a fraction in (0, 1], got 1.5"),
])
def test_show_bad_input_is_one_line_and_exit_2(search, capsys, args, expected):
    code, out, err = show(search, *args, capsys=capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


def test_show_says_when_there_is_no_search_or_no_table_yet(tmp_path, capsys):
    from automl_factor.show import main
    code, _, err = run_main(main, ["--storage-path", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no search under --storage-path" in err and err.count("\n") == 1
    (tmp_path / "runs" / "starting").mkdir(parents=True)
    (tmp_path / "runs" / "starting" / "search.json").write_text("{}")
    code, _, err = run_main(main, ["--storage-path", str(tmp_path / "runs")], capsys)
    assert code == 2 and "search 'starting' has no trial table yet" in err and err.count("\n") == 1


# export --------------------------------------------------------------------------------------------


@integration
def test_export_by_trial_id_as_onnx_matches_torch_and_writes_a_model_card(search, tmp_path, capsys):
    import onnxruntime

    from automl_factor.export import Normalized, load_trial_model

    row = max((row for row in rows_of(search) if row["status"] == "complete"), key=lambda row: row["accuracy"])
    out = tmp_path / "model.onnx"
    code, stdout, err = export(search, "--trial", row["trial_id"], "--format", "onnx", "--out", str(out),
                               capsys=capsys)
    assert code == 0, err
    assert "onnxruntime check: max |onnxruntime - torch|" in stdout

    images, labels = digits_test()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    model, info = load_trial_model(row["checkpoint"])
    with torch.no_grad():
        expected = Normalized(model, info["mean"], info["std"]).eval()(images)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(row["test_accuracy"], abs=1e-6)

    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["accuracy"] == {"validation": row["accuracy"], "test": row["test_accuracy"]}
    assert card["params"] == row["params"] and card["params_ratio"] == row["params_ratio"]
    assert card["flops"] > 0 and card["flops_ratio"] == row["flops_ratio"]
    assert card["latency"]["export"]["ms"] > 0 and card["latency"]["export"]["device"] == "cpu"
    assert card["latency"]["export"]["batch_size"] == 1
    assert card["latency"]["search"]["ratio_to_dense"] == row["latency_ratio"]
    assert card["plan"] == json.loads(row["plan"])
    assert card["dataset"] == "digits" and card["format"] == "ONNX"
    assert card["source"]["search"] == "it" and card["source"]["trial_id"] == row["trial_id"]
    assert card["source"]["mlflow_run_id"] == row["mlflow_run_id"]
    assert card["exported"]["onnxruntime_max_abs_diff"] < 1e-3
    markdown = out.with_suffix(".card.md").read_text()
    assert f"trial `{row['trial_id']}` of search `it`" in markdown
    assert f"| test accuracy | {row['test_accuracy']:.4f} |" in markdown and "## Plan" in markdown


@integration
def test_export_accepts_the_mlflow_run_id_and_the_run_name(search, tmp_path, capsys):
    row = next(row for row in rows_of(search) if row["status"] == "complete")
    for identifier in (row["mlflow_run_id"], f"trial-{row['trial_id']}"):
        out = tmp_path / f"{identifier}.pt2"
        code, _, err = export(search, "--trial", identifier, "--out", str(out), capsys=capsys)
        assert code == 0, err
        assert json.loads(out.with_suffix(".card.json").read_text())["source"]["trial_id"] == row["trial_id"]


@integration
def test_export_pick_writes_the_model_show_marks(search, tmp_path, capsys):
    code, out, _ = show(search, "it", "--knee", capsys=capsys)
    knee_trial = picked_trial(out)
    target = tmp_path / "knee.pt2"
    code, out, err = export(search, "--name", "it", "--pick", "knee", "--out", str(target), capsys=capsys)
    assert code == 0, err
    assert f"picked trial {knee_trial} of search 'it'" in out
    card = json.loads(target.with_suffix(".card.json").read_text())
    assert card["source"]["trial_id"] == knee_trial and "knee" in card["source"]["picked_by"]

    row = next(row for row in rows_of(search) if row["trial_id"] == knee_trial)
    images, labels = digits_test()
    with torch.no_grad():
        predictions = torch.export.load(str(target)).module()(images).argmax(1)
    assert (predictions == labels).float().mean().item() == pytest.approx(row["test_accuracy"], abs=1e-6)

    code, _, err = export(search, "--pick", "best-under", capsys=capsys)
    assert code == 2 and "--pick best-under needs a constraint" in err


@integration
def test_export_refuses_a_stopped_trial_unless_forced(search, tmp_path, capsys):
    row = next(row for row in rows_of(search) if row["status"] == "pruned")
    out = tmp_path / "stopped.pt2"
    code, stdout, err = export(search, "--trial", row["trial_id"], "--out", str(out), capsys=capsys)
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and "was stopped early" in err and "--force" in err, err
    code, _, err = export(search, "--trial", row["trial_id"], "--out", str(out), "--force", capsys=capsys)
    assert code == 0 and out.is_file()
    assert err.startswith("warning: ") and "was stopped early" in err
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["source"]["status"] == "pruned" and card["accuracy"]["test"] is None
    assert "**Status: pruned**" in out.with_suffix(".card.md").read_text()


@integration
def test_export_refuses_a_failed_trial_a_parent_run_and_unknown_ids(search, tmp_path, capsys):
    storage = search / "automl_runs"
    rows = rows_of(search)
    # A copy of the search whose first complete trial failed (a real failure is hard to provoke).
    failed = next(row for row in rows if row["status"] == "complete")
    edited = [{**row, "status": "failed", "reason": "RuntimeError: boom", "pareto": False}
              if row is failed else row for row in rows]
    (storage / "edited").mkdir(exist_ok=True)
    schema = pq.read_schema(storage / "it" / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(edited, schema=schema), storage / "edited" / "trials.parquet")
    code, _, err = export(search, "--name", "edited", "--trial", failed["trial_id"], capsys=capsys)
    assert code == 2 and f"trial {failed['trial_id']} of search 'edited' failed" in err and "--force" in err, err

    parent = json.loads((storage / "it" / "search.json").read_text())["parent_run_id"]
    code, _, err = export(search, "--name", "it", "--trial", parent, capsys=capsys)
    assert code == 2 and "is the MLflow parent run of search 'it', not a trial" in err, err
    code, _, err = export(search, "--trial", "deadbeef", capsys=capsys)
    assert code == 2 and "--trial 'deadbeef' not found: it is not a trial of any search" in err
    code, _, err = export(search, capsys=capsys)
    assert code == 2 and "say which model to export" in err
    code, _, err = export(search, "--trial", failed["trial_id"], "--max-params", "0.1", capsys=capsys)
    assert code == 2 and "choose a model with --pick" in err
    (storage / "edited" / "trials.parquet").unlink()
    (storage / "edited").rmdir()


@integration
def test_export_parent_run_id_through_mlflow_says_so(search, capsys, monkeypatch):
    """A run id in no table is looked up in MLflow; a parent run there gets the same clear message."""
    parent = json.loads((search / "automl_runs" / "it" / "search.json").read_text())["parent_run_id"]
    monkeypatch.chdir(search)
    from automl_factor.export import main
    code, _, err = run_main(main, ["--storage-path", "elsewhere", "--trial", parent], capsys)
    assert code == 2 and "is a search's parent run ('it'), not a trial" in err, err


# train --out -----------------------------------------------------------------------------------------


@integration
def test_train_out_saves_a_checkpoint_export_accepts(tmp_path):
    folder = tmp_path / "model.pt"
    trained = run_cli("automl_factor.train", "--epochs", "1", "--train-subset", "200", "--val-fraction", "0.2",
                      "--out", str(folder), cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    test_accuracy = float(re.search(r"test accuracy\s+([\d.]+)%", trained.stdout).group(1)) / 100
    exported = run_cli("automl_factor.export", "--checkpoint", str(folder), "--out", "model.pt2", cwd=tmp_path,
                       timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    card = json.loads((tmp_path / "model.card.json").read_text())
    assert card["accuracy"]["test"] == pytest.approx(test_accuracy, abs=5e-5)
    assert card["accuracy"]["validation"] is not None and card["params_ratio"] < 0.11
    assert "--out" in card["source"]["command"] and card["dataset"] == "digits"
    images, labels = digits_test()
    with torch.no_grad():
        predictions = torch.export.load(str(tmp_path / "model.pt2")).module()(images).argmax(1)
    assert (predictions == labels).float().mean().item() == pytest.approx(card["accuracy"]["test"], abs=1e-6)


def test_train_out_must_name_a_folder(tmp_path, capsys):
    from automl_factor.train.__main__ import parse_args
    (tmp_path / "file").write_text("")
    code, _, err = run_main(parse_args, ["--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "is a file" in err
    code, _, err = run_main(parse_args, ["--out", str(tmp_path / "missing" / "model.pt")], capsys)
    assert code == 2 and "does not exist" in err


# --help ------------------------------------------------------------------------------------------------


class _Captured(Exception):
    pass


@pytest.mark.parametrize("module", ["automl_factor.train.__main__", "automl_factor.export", "automl_factor.show"])
def test_every_option_has_help_and_shows_its_default(module, monkeypatch):
    """Each option explains itself; where it has a default, --help shows it."""
    import importlib

    def capture(parser, argv=None):
        raise _Captured(parser)

    monkeypatch.setattr(cli.Parser, "parse_args", capture)
    entry = importlib.import_module(module)
    with pytest.raises(_Captured) as caught:
        (entry.parse_args if hasattr(entry, "parse_args") else entry.main)([])
    parser = caught.value.args[0]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.option_strings or action.dest} has no help"
        text = formatter._expand_help(action) if action.help else ""
        if action.default is not None and action.default is not False:
            assert "default" in text, f"{action.option_strings}: {text!r} does not show its default {action.default!r}"


# selection rules on made-up rows ---------------------------------------------------------------------------


def _row(trial: str, accuracy: float, params: float, latency: float = 1.0) -> dict:
    return {"trial_id": trial, "accuracy": accuracy, "params_ratio": params, "latency_ratio": latency,
            "status": "complete", "pareto": True}


def test_knee_is_the_point_farthest_above_the_line_between_the_extremes():
    rows = [_row("big", 0.95, 0.10), _row("knee", 0.93, 0.03), _row("mid", 0.94, 0.06), _row("tiny", 0.70, 0.01)]
    assert knee(rows)["trial_id"] == "knee"
    # Scale-free: the same shape in other units picks the same model.
    scaled = [{**row, "params_ratio": row["params_ratio"] * 7} for row in rows]
    assert knee(scaled)["trial_id"] == "knee"
    # A 3-D front member that another beats in (accuracy, params) is not a knee candidate.
    assert knee([*rows, _row("slow-but-fast", 0.92, 0.05, latency=0.5)])["trial_id"] == "knee"
    assert knee(rows[:2])["trial_id"] == "big" and knee([]) is None


def test_best_under_constraints():
    rows = [_row("a", 0.95, 0.10, 1.2), _row("b", 0.93, 0.05, 0.9), _row("c", 0.90, 0.02, 0.7)]
    assert best(rows)["trial_id"] == "a"
    assert best(rows, Constraints(max_params=0.05))["trial_id"] == "b"
    assert best(rows, Constraints(min_accuracy=0.92))["trial_id"] == "b"  # the smallest that meets it
    assert best(rows, Constraints(max_latency=0.8))["trial_id"] == "c"
    assert best(rows, Constraints(max_params=0.01)) is None
    with pytest.raises(PickError, match="--min-accuracy is a fraction in"):
        Constraints(min_accuracy=97)
