"""``python -m automl_factor.export``: a searched (or trained) model as plain PyTorch or ONNX, with a model card.

Which model: a trial id as ``python -m automl_factor.show`` prints it (or its MLflow run id), a
pick from a search (``--name SEARCH --pick knee|best|best-under`` with the constraint flags
``show`` takes; the same selection code), or a checkpoint folder written by
``python -m automl_factor.train --out``. A trial that was stopped early or failed is refused
unless ``--force``: its weights are half-trained.

The model is rebuilt from the checkpoint, collapsed to plain ``torch.nn`` layers and written with
``torch.export.save`` (or as ONNX with ``--format onnx``, checked against the torch model in
onnxruntime when it is installed). Both load anywhere, without this package::

    program = torch.export.load("model.pt2")
    logits = program.module()(images)   # float images in [0, 1], shape (N, C, H, W); normalizes inside

    session = onnxruntime.InferenceSession("model.onnx")
    logits = session.run(None, {"images": images.numpy()})[0]

Next to the file go ``<out>.card.json`` and ``<out>.card.md``: accuracy (validation, test),
parameters, FLOPs, latency (device, batch), the plan, and the search and trial it came from.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .cli import DefaultsFormatter, Parser, fail
from .search.pick import (DEFAULT_STORAGE, PICKS, PickError, Search, add_constraint_options, constraints_from,
                          find_trial, open_search, pick)

__all__ = ["Normalized", "load_trial_model", "export_program", "export_onnx", "model_card", "card_markdown", "main"]

FORMATS = ("torch", "onnx")
SUFFIXES = {"torch": ".pt2", "onnx": ".onnx"}
EXPORT_LATENCY = {"device": "cpu", "batch_size": 1, "threads": 1}  # where export times the collapsed model


class Normalized(nn.Module):
    """Takes images in [0, 1] and applies the training normalization, so users need not know it."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def _read_bytes(uri: str) -> bytes:
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def load_trial_model(checkpoint_uri: str) -> tuple[nn.Module, dict]:
    """The trained, collapsed model of a checkpoint (local folder or URI), and its info
    (``train.checkpoint`` format: written by search trials and by ``train --out``)."""
    from .train.checkpoint import INFO_FILE, STATE_FILE, read_state, rebuild_model

    info = json.loads(_read_bytes(f"{checkpoint_uri}/{INFO_FILE}"))
    state = read_state(_read_bytes(f"{checkpoint_uri}/{STATE_FILE}"))
    return rebuild_model(info, state["model"]), info


def _normalized_program(model: nn.Module, info: dict) -> tuple[nn.Module, torch.export.ExportedProgram]:
    wrapped = Normalized(model, info["mean"], info["std"]).eval()
    example = torch.rand(2, *info["image_shape"])
    return wrapped, torch.export.export(wrapped, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def export_program(model: nn.Module, info: dict, out: str | Path) -> torch.export.ExportedProgram:
    """``torch.export`` of the normalized model with a dynamic batch dimension, saved to ``out``."""
    _, program = _normalized_program(model, info)
    buffer = io.BytesIO()  # written through a buffer so any file name works (torch prefers .pt2)
    torch.export.save(program, buffer)
    Path(out).write_bytes(buffer.getvalue())
    return program


def export_onnx(model: nn.Module, info: dict, out: str | Path) -> float | None:
    """The normalized model as ONNX (input ``images``, output ``logits``, dynamic batch), saved to
    ``out``; returns the largest |onnxruntime - torch| logit gap on random images, or None when
    onnxruntime is not installed."""
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError as error:
        fail(f"--format onnx needs {error.name!r}: pip install 'automl-factor[onnx]' (onnx, onnxscript, onnxruntime)")
    wrapped, program = _normalized_program(model, info)
    example = torch.rand(2, *info["image_shape"])
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, input_names=["images"],
                                         output_names=["logits"])
    onnx_program.save(str(out))
    return onnx_gap(wrapped, out, info["image_shape"])


def onnx_gap(model: nn.Module, path: str | Path, image_shape: list[int], batch: int = 5) -> float | None:
    """Largest absolute difference between onnxruntime's and torch's logits on ``batch`` random images
    (a batch size other than the export example's, so the dynamic batch is exercised too)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    images = torch.rand(batch, *image_shape, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).numpy()
    return float(abs(got - expected).max())


# Which model ---------------------------------------------------------------------------------------


@dataclass
class Source:
    """A model to export: its checkpoint, what was measured of it, and where it came from."""

    checkpoint: str | None
    label: str                       # "trial 6680756e of search it", for messages
    status: str                      # complete | pruned | failed | running | trained (train --out)
    metrics: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)
    search: Search | None = None
    plan_layers: list[dict] | None = None


def _from_row(search: Search, row: dict, picked_by: str | None = None) -> Source:
    metrics = {key: row.get(key) for key in ("accuracy", "test_accuracy", "params", "params_ratio", "flops_ratio",
                                             "latency_ratio", "latency_ratio_spread", "latency_ms",
                                             "dense_latency_ms", "epochs_trained")}
    origin = {"search": search.name, "storage": search.uri, "trial_id": row["trial_id"],
              "mlflow_run_id": row.get("mlflow_run_id"), "parent_run_id": search.state.get("parent_run_id"),
              "tracking_uri": search.state.get("tracking_uri"), "status": row["status"],
              "on_front": bool(row.get("pareto")), "picked_by": picked_by, "checkpoint": row.get("checkpoint")}
    layers = json.loads(row["plan_layers"]) if row.get("plan_layers") else None
    return Source(row.get("checkpoint"), f"trial {row['trial_id']} of search {search.name!r}", row["status"], metrics,
                  origin, search, layers)


def _from_mlflow(run_id: str, uri: str) -> Source:
    """A trial known only to MLflow (its run id is in no table under --storage-path)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        fail(f"--trial {run_id!r} not found: it is in no search's table and there is no MLflow store at {uri!r}")
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        fail(f"--trial {run_id!r} not found in {uri}: {str(error).splitlines()[0]}")
    tags = run.data.tags
    if tags.get("automl_factor.role") == "search" or "mlflow.parentRunId" not in tags:
        fail(f"--trial {run_id!r} is a search's parent run ({run.info.run_name!r}), not a trial; list its models with "
             f"python -m automl_factor.show {run.info.run_name} and export one by its trial id")
    trial_id = tags.get("automl_factor.trial_id", run_id)
    origin = {"trial_id": trial_id, "mlflow_run_id": run_id, "parent_run_id": tags["mlflow.parentRunId"],
              "tracking_uri": uri, "status": tags.get("status"), "on_front": tags.get("pareto") == "true",
              "checkpoint": tags.get("checkpoint")}
    return Source(tags.get("checkpoint"), f"trial {trial_id} (MLflow run {run_id})", tags.get("status", "unknown"),
                  dict(run.data.metrics), origin)


def _from_checkpoint(folder: str) -> Source:
    from .train.checkpoint import INFO_FILE, STATE_FILE

    for name in (INFO_FILE, STATE_FILE):
        if "://" not in folder and not (Path(folder) / name).is_file():
            fail(f"--checkpoint {folder!r} is not a checkpoint folder: it has no {name} "
                 f"(write one with python -m automl_factor.train --out FOLDER)")
    info = json.loads(_read_bytes(f"{folder}/{INFO_FILE}"))
    origin = {"checkpoint": str(Path(folder).resolve()) if "://" not in folder else folder, **info.get("source", {})}
    return Source(folder, f"checkpoint {folder!r}", "trained", dict(info.get("metrics", {})), origin)


def resolve(args) -> Source:
    """The model the arguments name (exit 2 with one line when they name none)."""
    given = (("--trial", args.trial), ("--pick", args.pick), ("--checkpoint", args.checkpoint))
    chosen = [flag for flag, value in given if value is not None]
    if len(chosen) != 1:
        start = "say which model to export with one of" if not chosen else f"{' and '.join(chosen)} exclude each other"
        fail(f"{start}: --trial ID (as python -m automl_factor.show prints it), --name SEARCH --pick "
             f"knee|best|best-under, or --checkpoint FOLDER (from python -m automl_factor.train --out)")
    constraints = constraints_from(args)
    if constraints and not args.pick:
        fail("--max-params, --min-accuracy and --max-latency choose a model with --pick; "
             f"{chosen[0]} already names one")
    if args.checkpoint:
        return _from_checkpoint(args.checkpoint)
    try:
        if args.pick:
            search = open_search(args.storage_path, args.name)
            chosen_pick = pick(search, args.pick, constraints)
            return _from_row(search, chosen_pick.row, f"--pick {args.pick}: {chosen_pick.reason}")
        search, row = find_trial(args.trial, args.storage_path, args.name)
        return _from_row(search, row)
    except PickError as error:
        fail(str(error))
    except LookupError:
        pass
    where = f"search {args.name!r}" if args.name else f"any search under --storage-path {args.storage_path!r}"
    if re.fullmatch(r"[0-9a-f]{32}", args.trial):  # an MLflow run id: ask MLflow
        return _from_mlflow(args.trial, args.mlflow_uri)
    fail(f"--trial {args.trial!r} not found: it is not a trial of {where}; trial ids are the 'trial' column of "
         f"python -m automl_factor.show (or a trial's 32-hex MLflow run id)")


def check_status(source: Source, force: bool) -> None:
    """Refuse (exit 2) a model that is not fully trained, unless ``force``; then warn."""
    if source.status in ("complete", "trained"):
        if not source.checkpoint:
            fail(f"{source.label} left no checkpoint to export")
        return
    accuracy, test = source.metrics.get("accuracy"), source.metrics.get("test_accuracy")
    epochs, full = source.metrics.get("epochs_trained"), _full_epochs(source)
    trained = f" after {epochs:.0f}{f' of {full}' if full else ''} epochs" if epochs else ""
    what = {"pruned": f"was stopped early by the scheduler{trained}",
            "failed": "failed", "running": "has not finished",
            "interrupted": f"was interrupted{trained} (--resume the search to finish it)"}.get(source.status, f"has status {source.status!r}")
    message = (f"{source.label} {what} (validation accuracy "
               f"{'unknown' if accuracy is None else f'{accuracy:.4f}'}, test accuracy "
               f"{'never measured' if test is None else f'{test:.4f}'}): not a fully trained model")
    if not source.checkpoint:
        fail(f"{message}, and it left no checkpoint to export")
    if not force:
        show = f"python -m automl_factor.show {source.search.name}" if source.search else "python -m automl_factor.show"
        fail(f"{message}. Pick a complete one ({show}) or pass --force to export it anyway")
    print(f"warning: {message}; exporting it anyway (--force)", file=sys.stderr)


def _full_epochs(source: Source) -> int | None:
    """A full trial's epochs in the source's search (what its complete trials trained)."""
    complete = source.search.complete if source.search else []
    return max((row.get("epochs_trained") or 0 for row in complete), default=None) or None


# The model card --------------------------------------------------------------------------------------


def _space(search: Search | None) -> tuple[dict, str] | None:
    """The search's space YAML (as written, unvalidated) and its path, when the file can still be found."""
    if search is None:
        return None
    import yaml

    space = search.option("space")
    default = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"
    if space is None:
        candidates = [default]
    else:  # a path, or a name in search_spaces/
        candidates = [Path(space), default.parent / space, default.parent / f"{space}.yaml"]
    # A relative path was relative to where the search ran: the storage folder minus its relative --storage-path.
    relative, storage = Path(search.option("storage_path") or ""), Path(search.uri).parent
    if space is not None and "://" not in search.uri and not relative.is_absolute() \
            and relative.parts and storage.parts[-len(relative.parts):] == relative.parts:
        candidates.insert(1, Path(*storage.parts[:-len(relative.parts)]) / space)
    for path in candidates:
        if path.is_file():
            return yaml.safe_load(path.read_text()) or {}, str(path)
    return None


def _latency_target(space: tuple[dict, str] | None) -> dict | None:
    """Where the search timed latency (``latency:`` of its space; the space's defaults when absent)."""
    if space is None:
        return None
    latency = space[0].get("latency") or {}
    return {"device": latency.get("device", "cpu"), "batch_size": latency.get("batch_size", 1),
            "threads": latency.get("threads", 1), "space": space[1]}


def model_card(source: Source, model: nn.Module, info: dict, out: Path, fmt: str, *,
               onnx_check: float | None = None) -> dict:
    """What a user needs to know of the exported model, measured now (params, FLOPs, latency) and
    as the search or training measured it (accuracy, ratios to dense)."""
    from .factorization import count_params
    from .train import count_flops, latency_ms

    shape = (1, *info["image_shape"])
    metrics = source.metrics
    space = _space(source.search)
    dataset = ((space[0].get("data") or {}).get("name") if space else None) or source.origin.get("dataset")
    card = {
        "file": out.name, "format": {"torch": "torch.export (ExportedProgram)", "onnx": "ONNX"}[fmt],
        "input": {"name": "images", "shape": ["N", *info["image_shape"]], "dtype": "float32", "range": [0.0, 1.0],
                  "normalization": {"mean": info["mean"], "std": info["std"], "applied": "inside the model"}},
        "output": {"name": "logits", "shape": ["N", info["num_classes"]]},
        "model": info["model"], "model_kwargs": info.get("model_kwargs", {}), "num_classes": info["num_classes"],
        "dataset": dataset,
        "accuracy": {"validation": metrics.get("accuracy"), "test": metrics.get("test_accuracy")},
        "params": count_params(model), "params_ratio": metrics.get("params_ratio"),
        "flops": count_flops(model, shape), "flops_ratio": metrics.get("flops_ratio"),
        "latency": {
            "export": {"ms": latency_ms(model, shape, threads=EXPORT_LATENCY["threads"]), **EXPORT_LATENCY,
                       "how": "median of torch.utils.benchmark on the collapsed model, at export"},
            "search": {"ratio_to_dense": metrics.get("latency_ratio"), "spread": metrics.get("latency_ratio_spread"),
                       "ms": metrics.get("latency_ms"), "dense_ms": metrics.get("dense_latency_ms"),
                       "target": _latency_target(space)},
        },
        "plan": info.get("plan", {}),
        "source": {key: value for key, value in source.origin.items() if value is not None},
        "exported": {"at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "torch": torch.__version__, "onnxruntime_max_abs_diff": onnx_check},
    }
    if fmt != "onnx":
        del card["exported"]["onnxruntime_max_abs_diff"]
    if source.plan_layers:
        card["plan_layers"] = source.plan_layers
    return card


def _cell(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def card_markdown(card: dict) -> str:
    """The card for people: what it is, how well it does, how to load it, the plan."""
    source, latency = card["source"], card["latency"]
    origin = (f"trial `{source['trial_id']}` of search `{source['search']}`" if "search" in source
              else f"trial `{source['trial_id']}`" if "trial_id" in source else f"`{source.get('checkpoint')}`")
    dataset = f" on {card['dataset']}" if card.get("dataset") else ""
    lines = [f"# {card['model']}{dataset}: {origin}", ""]
    if source.get("status") not in (None, "complete"):
        lines += [f"**Status: {source['status']}** (not a fully trained model; exported with --force)", ""]
    lines += ["| | |", "| --- | --- |",
              f"| validation accuracy | {_cell(card['accuracy']['validation'])} |",
              f"| test accuracy | {_cell(card['accuracy']['test'])} |",
              f"| parameters | {card['params']:,} ({_cell(card['params_ratio'])} of dense) |",
              f"| FLOPs per image | {card['flops']:,} ({_cell(card['flops_ratio'])} of dense) |",
              f"| latency at export | {latency['export']['ms']:.3f} ms ({latency['export']['device']}, batch "
              f"{latency['export']['batch_size']}, {latency['export']['threads']} thread) |"]
    search_latency = latency["search"]
    if search_latency.get("ratio_to_dense") is not None:
        target = search_latency.get("target") or {}
        where = f" ({target['device']}, batch {target['batch_size']})" if target else ""
        spread = search_latency.get("spread")
        when = "searched" if "search" in source else "trained"
        lines.append(f"| latency when {when}{where} | {search_latency['ratio_to_dense']:.2f}× dense"
                     + (f" ±{100 * spread:.0f}%" if spread is not None else "") + " |")
    for key, label in (("picked_by", "picked by"), ("on_front", "on the Pareto front"), ("mlflow_run_id", "MLflow run"),
                       ("parent_run_id", "MLflow parent run"), ("tracking_uri", "MLflow tracking URI"),
                       ("storage", "search folder"), ("checkpoint", "checkpoint"), ("command", "trained with")):
        if key in source:
            lines.append(f"| {label} | `{source[key]}` |" if key not in ("picked_by", "on_front")
                         else f"| {label} | {str(source[key]).lower() if key == 'on_front' else source[key]} |")
    shape = ", ".join(map(str, card["input"]["shape"][1:]))
    load = (f'torch.export.load("{card["file"]}").module()(images)' if card["format"].startswith("torch")
            else f'onnxruntime.InferenceSession("{card["file"]}").run(None, {{"images": images.numpy()}})[0]')
    lines += ["", "## Use", "", f"`{load}` with float32 images in [0, 1] of shape (N, {shape}); the model "
              "normalizes them itself and returns logits. Nothing of automl_factor is needed.", "", "## Plan", ""]
    lines += _plan_lines(card)
    return "\n".join(lines) + "\n"


def _plan_lines(card: dict) -> list[str]:
    if card.get("plan_layers"):
        lines = ["| layer | group | kind | rank / full rank | params (dense) |", "| --- | --- | --- | --- | --- |"]
        for layer in card["plan_layers"]:
            rank = "-" if layer.get("rank") is None else f"{layer['rank']} / {layer.get('full_rank', '?')}"
            lines.append(f"| {layer['layer']} | {layer.get('group', '')} | {layer['kind']} ({layer.get('layout', '')})"
                         f" | {rank} | {layer.get('params', 0):,} ({layer.get('dense_params', 0):,}) |")
        return lines
    if not card["plan"]:
        return ["Dense: no layer factorized."]
    lines = ["| layer | kind | rank | layout | init | regularizer |", "| --- | --- | --- | --- | --- | --- |"]
    for name, layer in card["plan"].items():
        lines.append(f"| {name} | {layer.get('kind')} | {_cell(layer.get('rank'))} | {layer.get('layout', '')} | "
                     f"{layer.get('init', '')} | {layer.get('regularizer', '')} |")
    return lines


def write_card(card: dict, out: Path) -> tuple[Path, Path]:
    """``<out>.card.json`` and ``<out>.card.md`` beside the exported file."""
    json_path, markdown_path = out.with_suffix(".card.json"), out.with_suffix(".card.md")
    json_path.write_text(json.dumps(card, indent=1) + "\n")
    markdown_path.write_text(card_markdown(card))
    return json_path, markdown_path


# The command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    parser = Parser(prog="python -m automl_factor.export", description=__doc__.split("\n\n")[0],
                    formatter_class=DefaultsFormatter)
    which = parser.add_argument_group("which model (give one of --trial, --pick, --checkpoint)")
    which.add_argument("--trial", "--run-id", dest="trial", metavar="ID", default=None,
                       help="a trial id as python -m automl_factor.show prints it, or the trial's 32-hex MLflow run id")
    which.add_argument("--pick", choices=PICKS, default=None,
                       help="choose from search --name: knee of the accuracy-params front, the most accurate (best), "
                            "or best within the constraints below (best-under)")
    which.add_argument("--checkpoint", metavar="FOLDER", default=None,
                       help="a checkpoint folder written by python -m automl_factor.train --out (or a trial's)")
    which.add_argument("--name", default=None,
                       help="the search (default: with --pick the latest under --storage-path; with --trial any "
                            "search holding it)")
    which.add_argument("--storage-path", default=DEFAULT_STORAGE, help="where searches keep their results")
    add_constraint_options(which)
    parser.add_argument("--out", default=None,
                        help="file to write (default: SEARCH-TRIAL.pt2 here, .onnx with --format onnx; for "
                             "--checkpoint FOLDER, FOLDER's name with that suffix)")
    parser.add_argument("--format", choices=FORMATS, default="torch",
                        help="torch: a torch.export program (torch.export.load); onnx: an ONNX graph "
                             "(needs the [onnx] extra)")
    parser.add_argument("--force", action="store_true",
                        help="export a trial that was stopped early or failed anyway (with a warning)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow store, read only for a 32-hex run id found in no search's table "
                             "(default: sqlite:///mlflow.db)")
    return parser.parse_args(argv)


def _default_out(source: Source, fmt: str) -> Path:
    if source.search is not None:
        stem = f"{source.search.name}-{source.origin['trial_id']}"
    elif "trial_id" in source.origin:
        stem = source.origin["trial_id"]
    else:
        stem = Path(source.checkpoint.rstrip("/")).stem or "model"
    return Path(stem + SUFFIXES[fmt])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.mlflow_uri = args.mlflow_uri or "sqlite:///mlflow.db"
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        fail(f"--out {args.out!r}: folder {str(Path(args.out).resolve().parent)!r} does not exist")
    source = resolve(args)
    check_status(source, args.force)
    out = Path(args.out) if args.out else _default_out(source, args.format)
    if source.origin.get("picked_by"):
        print(f"picked {source.label} ({source.origin['picked_by']})")

    model, info = load_trial_model(source.checkpoint)
    gap = None
    if args.format == "onnx":
        gap = export_onnx(model, info, out)
    else:
        export_program(model, info, out)
    card = model_card(source, model, info, out, args.format, onnx_check=gap)
    json_path, markdown_path = write_card(card, out)

    accuracy = card["accuracy"]
    ratio = f" ({card['params_ratio']:.4f} of dense)" if card["params_ratio"] is not None else ""
    print(f"wrote {out}: {card['params']:,} params{ratio}, {card['flops']:,} FLOPs per image, "
          f"latency {card['latency']['export']['ms']:.3f} ms (cpu, batch 1, 1 thread)")
    print(f"accuracy: validation {_cell(accuracy['validation'])}, test {_cell(accuracy['test'])}; "
          f"status {source.status}")
    if args.format == "onnx":
        print("onnxruntime check: " + ("not run (onnxruntime not installed)" if gap is None
                                       else f"max |onnxruntime - torch| = {gap:.2e} on 5 random images"))
        print(f'load it with: onnxruntime.InferenceSession({str(out)!r}).run(None, {{"images": images}})[0]  '
              f"# float32 images in [0, 1], shape (N, {', '.join(map(str, info['image_shape']))})")
    else:
        print(f"load it with: torch.export.load({str(out)!r}).module()(images)  # images in [0, 1], "
              f"shape (N, {', '.join(map(str, info['image_shape']))})")
    print(f"model card: {json_path}, {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
