"""Choosing a model from a search's tables: the front, the best under a constraint, the knee.

``python -m automl_factor.show`` and ``python -m automl_factor.export --pick`` both call this
module, so the model ``show`` marks is the model ``export`` writes. It reads only the Parquet
table a search keeps under its storage folder (``<storage>/<name>/trials.parquet``, rewritten as
each trial ends), never Ray or MLflow: it works on a running search, an interrupted one, and on
any machine that sees the folder.

What counts as "best":

- **best**: the most accurate complete model (validation accuracy) meeting every constraint
  given; with ``--min-accuracy`` (a floor on accuracy, so more accuracy is not the point) the one
  with the fewest parameters instead. Ties go to the smaller, then the more accurate model.
- **knee**: among the front's models that meet the constraints, keep those no other beats in
  both validation accuracy and ``params_ratio`` (the 2-D front), and scale both to [0, 1] over
  that set, so the most accurate model sits at (1, 1) and the smallest at (0, 0). The knee is the
  model farthest above the line between them (largest ``accuracy - params``, both normalized):
  the point past which more parameters buy little accuracy. With fewer than three such models,
  the most accurate.

The front itself is the search's own (the ``pareto`` column, three objectives: accuracy, params,
latency); the knee is read in its (accuracy, params) projection.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .saved import STATE_FILE  # parent run, tracking URI, options of a search

__all__ = ["DEFAULT_STORAGE", "PICKS", "Constraints", "PickError", "Search", "Pick", "search_names", "open_search",
           "find_trial", "pick", "knee", "best", "plan_summary", "plan_label", "model_name", "export_command",
           "python_command", "add_constraint_options", "constraints_from"]

DEFAULT_STORAGE = "./automl_runs"
TRIALS_TABLE = "trials.parquet"
FRONT_TABLE = "pareto.parquet"   # written once the search has finished
PICKS = ("knee", "best", "best-under")


class PickError(ValueError):
    """Bad input (unknown search, no table yet, a constraint nobody meets): one line for the user."""


@dataclass(frozen=True)
class Constraints:
    """Upper/lower bounds a picked model must meet; None leaves an objective free."""

    max_params: float | None = None     # params_ratio <= this
    min_accuracy: float | None = None   # validation accuracy >= this
    max_latency: float | None = None    # latency_ratio (x dense) <= this

    def __post_init__(self):
        for option, value in (("--max-params", self.max_params), ("--min-accuracy", self.min_accuracy),
                              ("--max-latency", self.max_latency)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PickError(f"{option} must be a positive number, got {value}")
        if self.min_accuracy is not None and self.min_accuracy > 1:
            raise PickError(f"--min-accuracy is a fraction in (0, 1], got {self.min_accuracy}")

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.max_params, self.min_accuracy, self.max_latency))

    def _bounds(self) -> list[tuple[str, str, str, float]]:
        """(option, column, comparison, value) of each constraint given."""
        bounds = [("--max-params", "params_ratio", "<=", self.max_params),
                  ("--min-accuracy", "accuracy", ">=", self.min_accuracy),
                  ("--max-latency", "latency_ratio", "<=", self.max_latency)]
        return [bound for bound in bounds if bound[3] is not None]

    def allows(self, row: dict) -> bool:
        for _, column, comparison, value in self._bounds():
            metric = _number(row.get(column))
            if metric is None or (metric > value if comparison == "<=" else metric < value):
                return False
        return True

    def describe(self) -> str:
        return " and ".join(f"{column} {comparison} {value:g}" for _, column, comparison, value in self._bounds())


@dataclass
class Search:
    """One search's folder and its trial table as last written."""

    name: str
    storage: str          # as the user gave it (for printed commands)
    uri: str              # <storage>/<name>, absolute or an object-store URI
    rows: list[dict]
    state: dict = field(default_factory=dict)   # search.json: parent run, tracking URI, options
    finished: bool = False                      # pareto.parquet written (the search ran to its end)

    @property
    def complete(self) -> list[dict]:
        """Trials that trained the full budget, most accurate first."""
        return sorted((row for row in self.rows if row["status"] == "complete" and _number(row.get("accuracy"))
                       is not None), key=lambda row: (-row["accuracy"], row["params_ratio"]))

    @property
    def front(self) -> list[dict]:
        """The search's Pareto front (the ``pareto`` column), most accurate first."""
        return [row for row in self.complete if row.get("pareto")]

    def option(self, key: str):
        """One of the search's options as search.json holds them ("options", typed; searches from
        before typed options kept the command line's "args" as strings); None when unset."""
        for section in ("options", "args"):
            value = (self.state.get(section) or {}).get(key)
            if value not in (None, "None"):
                return value
        return None

    @property
    def num_samples(self) -> int | None:
        value = str(self.option("num_samples"))
        return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class Pick:
    row: dict
    reason: str   # e.g. "knee of the accuracy-params front", for printing and the model card


def add_constraint_options(parser: argparse.ArgumentParser) -> None:
    """The constraint flags, the same in ``show`` and ``export``."""
    parser.add_argument("--max-params", type=_positive, default=None, metavar="RATIO",
                        help="only models keeping at most this fraction of the dense parameters, e.g. 0.05 "
                             "(default: no limit)")
    parser.add_argument("--min-accuracy", type=_positive, default=None, metavar="FRACTION",
                        help="only models with at least this validation accuracy, e.g. 0.97; then the smallest "
                             "such model is the best (default: no floor)")
    parser.add_argument("--max-latency", type=_positive, default=None, metavar="RATIO",
                        help="only models at most this many times the dense model's latency, e.g. 0.8 "
                             "(default: no limit)")


def constraints_from(args: argparse.Namespace) -> Constraints:
    return Constraints(max_params=args.max_params, min_accuracy=args.min_accuracy, max_latency=args.max_latency)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    uri = storage if "://" in storage else Path(storage).resolve().as_uri()
    return pafs.FileSystem.from_uri(uri)


def _base_uri(storage: str) -> str:
    return storage.rstrip("/") if "://" in storage else str(Path(storage).resolve())


def search_names(storage: str = DEFAULT_STORAGE) -> list[str]:
    """The searches under ``storage``, oldest first (by when their table or state was last written)."""
    filesystem, root = _filesystem(storage)
    folders = [info for info in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
               if info.type == pafs.FileType.Directory]
    found = []
    for folder in folders:
        infos = filesystem.get_file_info([f"{folder.path}/{TRIALS_TABLE}", f"{folder.path}/{STATE_FILE}"])
        times = [info.mtime.timestamp() for info in infos if info.type == pafs.FileType.File and info.mtime]
        if times:
            found.append((max(times), folder.base_name))
    return [name for _, name in sorted(found)]


def open_search(storage: str = DEFAULT_STORAGE, name: str | None = None) -> Search:
    """The search ``name`` under ``storage`` (default: the one written most recently)."""
    names = search_names(storage)
    if not names:
        raise PickError(f"no search under --storage-path {storage!r} (looked in {_base_uri(storage)}); "
                        f"run one with python -m automl_factor.search, or pass the --storage-path it used")
    if name is None:
        name = names[-1]
    elif name not in names:
        raise PickError(f"no search named {name!r} under --storage-path {storage!r}; "
                        f"searches there: {', '.join(names)}")
    filesystem, root = _filesystem(storage)
    folder = f"{root.rstrip('/')}/{name}"
    rows = _read_rows(filesystem, f"{folder}/{TRIALS_TABLE}")
    if rows is None:
        raise PickError(f"search {name!r} has no trial table yet ({_base_uri(storage)}/{name}/{TRIALS_TABLE}): "
                        f"no trial has finished; try again once one has")
    state_info = filesystem.get_file_info(f"{folder}/{STATE_FILE}")
    state = {}
    if state_info.type == pafs.FileType.File:
        with filesystem.open_input_stream(f"{folder}/{STATE_FILE}") as stream:
            state = json.loads(stream.read())
    finished = filesystem.get_file_info(f"{folder}/{FRONT_TABLE}").type == pafs.FileType.File
    return Search(name=name, storage=storage, uri=f"{_base_uri(storage)}/{name}", rows=rows, state=state,
                  finished=finished)


def _read_rows(filesystem: pafs.FileSystem, path: str) -> list[dict] | None:
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    return pq.read_table(path, filesystem=filesystem).to_pylist()


def find_trial(identifier: str, storage: str = DEFAULT_STORAGE, name: str | None = None) -> tuple[Search, dict]:
    """The search and table row of a trial, by the trial id ``show`` prints (``trial-`` prefix, as
    in MLflow run names, allowed) or its MLflow run id. Searches ``name`` only, if given, else
    every search under ``storage``, newest first. A search's parent run id raises a PickError
    saying so; an id found nowhere raises LookupError (the caller may ask MLflow)."""
    wanted = identifier.removeprefix("trial-")
    names = [name] if name else list(reversed(search_names(storage)))
    for candidate in names:
        try:
            search = open_search(storage, candidate)
        except PickError:
            if name:
                raise
            continue  # a search with no finished trial yet cannot hold it
        if search.state.get("parent_run_id") == identifier:
            raise PickError(f"{identifier!r} is the MLflow parent run of search {candidate!r}, not a trial; "
                            f"pick one of its models: python -m automl_factor.show {candidate}")
        for row in search.rows:
            if wanted in (row["trial_id"], row.get("mlflow_run_id")):
                return search, row
    raise LookupError(identifier)


def best(rows: list[dict], constraints: Constraints = Constraints()) -> dict | None:
    """The most accurate row meeting ``constraints`` (the smallest, with a ``min_accuracy``)."""
    allowed = [row for row in rows if constraints.allows(row)]
    if not allowed:
        return None
    if constraints.min_accuracy is not None:
        return min(allowed, key=lambda row: (row["params_ratio"], -row["accuracy"]))
    return min(allowed, key=lambda row: (-row["accuracy"], row["params_ratio"]))


def knee(rows: list[dict]) -> dict | None:
    """The knee of ``rows`` in normalized (accuracy, params_ratio) coordinates (see the module
    docstring); None for no rows."""
    points = [row for row in rows if not any(_beats(other, row) for other in rows)]
    points.sort(key=lambda row: (-row["accuracy"], row["params_ratio"]))
    if len(points) < 3:
        return points[0] if points else None
    accuracies = [row["accuracy"] for row in points]
    sizes = [row["params_ratio"] for row in points]
    low_accuracy, accuracy_span = min(accuracies), (max(accuracies) - min(accuracies)) or 1.0
    low_size, size_span = min(sizes), (max(sizes) - min(sizes)) or 1.0

    def height(row: dict) -> float:  # (signed distance above the line between the extremes) * sqrt(2)
        return (row["accuracy"] - low_accuracy) / accuracy_span - (row["params_ratio"] - low_size) / size_span

    return max(points, key=height)  # max keeps the first (most accurate) of equal heights


def _beats(a: dict, b: dict) -> bool:
    """a is no worse than b in accuracy and params, and better in one."""
    return (a["accuracy"] >= b["accuracy"] and a["params_ratio"] <= b["params_ratio"]
            and (a["accuracy"] > b["accuracy"] or a["params_ratio"] < b["params_ratio"]))


def pick(search: Search, how: str, constraints: Constraints = Constraints()) -> Pick:
    """One model of ``search``: ``knee``, ``best``, or ``best-under`` (best, a constraint required)."""
    if how not in PICKS:
        raise PickError(f"--pick must be one of {', '.join(PICKS)}, got {how!r}")
    if how == "best-under" and not constraints:
        raise PickError("--pick best-under needs a constraint: --max-params, --min-accuracy or --max-latency")
    if not search.complete:
        raise PickError(f"search {search.name!r} has no complete model yet ({len(search.rows)} trials finished, "
                        f"none trained the full budget)")
    if how == "knee":
        candidates = [row for row in search.front if constraints.allows(row)]
        row = knee(candidates)
        reason = "knee of the accuracy-params front"
    else:
        row = best(search.complete, constraints)
        reason = ("smallest" if constraints.min_accuracy is not None else "most accurate") + " complete model"
    if row is None:
        raise PickError(_nobody_meets(search, constraints))
    return Pick(row, f"{reason} with {constraints.describe()}" if constraints else reason)


def _nobody_meets(search: Search, constraints: Constraints) -> str:
    """Which constraint failed, with the closest any complete model comes."""
    complete = search.complete
    for option, column, comparison, value in constraints._bounds():
        values = [(row[column], row["trial_id"]) for row in complete if _number(row.get(column)) is not None]
        closest = min(values) if comparison == "<=" else max(values)
        if (closest[0] > value) if comparison == "<=" else (closest[0] < value):
            return (f"{option} {value:g}: no complete model of search {search.name!r} has {column} {comparison} "
                    f"{value:g}; the {'lowest' if comparison == '<=' else 'highest'} is {closest[0]:.4f} "
                    f"(trial {closest[1]})")
    return (f"no complete model of search {search.name!r} meets {constraints.describe()} at once "
            f"(each alone is met); loosen one")


def plan_summary(plan: str | dict | None) -> str:
    """A plan in a few words: kinds with counts, then inits and regularizers of the factorized layers,
    e.g. ``lowrank×12 deep×6 · spectral · fd``."""
    if not plan:
        return "-"
    layers = (json.loads(plan) if isinstance(plan, str) else plan).values()
    kinds: dict[str, int] = {}
    for layer in layers:
        kinds[layer.get("kind", "?")] = kinds.get(layer.get("kind", "?"), 0) + 1
    factorized = [layer for layer in layers if layer.get("kind") != "dense"]
    inits = sorted({layer.get("init", "?") for layer in factorized})
    regularizers = sorted({layer.get("regularizer", "?") for layer in factorized})
    parts = [" ".join(f"{kind}×{count}" for kind, count in sorted(kinds.items(), key=lambda item: -item[1]))]
    if factorized:
        parts += ["/".join(inits), "/".join(regularizers)]
    return " · ".join(parts)


KIND_LABELS = {"lowrank": "lr", "deep": "deep", "overcomplete": "oc", "dense": "dense"}
INIT_LABELS = {"spectral": "SI"}                 # default init: no label
REGULARIZER_LABELS = {"fd": "FD", "wd": "WD"}    # none: no label


def plan_label(plan: str | dict | None) -> str:
    """A plan in a run name's few characters: factorized kinds (most used first), then init and
    regularizer of the factorized layers, e.g. ``lr·SI+FD``, ``lr+deep·FD/WD``; ``SI~`` when only
    some factorized layers are spectral. A plan with no factorized layer is ``dense``."""
    if not plan:
        return "?"
    layers = [layer for layer in (json.loads(plan) if isinstance(plan, str) else plan).values()
              if layer.get("kind") != "dense"]
    if not layers:
        return "dense"
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.get("kind", "?")] = counts.get(layer.get("kind", "?"), 0) + 1
    kinds = "+".join(KIND_LABELS.get(kind, kind) for kind, _ in sorted(counts.items(), key=lambda item: -item[1]))
    spectral = sum(layer.get("init") == "spectral" for layer in layers)
    init = "" if spectral == 0 else ("SI" if spectral == len(layers) else "SI~")
    regularizer = "/".join(sorted({REGULARIZER_LABELS[layer["regularizer"]] for layer in layers
                                   if layer.get("regularizer") in REGULARIZER_LABELS}))
    recipe = "+".join(part for part in (init, regularizer) if part)
    return f"{kinds}·{recipe}" if recipe else kinds


def model_name(row: dict, *, max_epochs: int | None = None) -> str:
    """What a trial trained, for a run name: ``lr·SI+FD·p0.094·acc0.990·<trial id>``; a model on the
    front starts with ``★``, one stopped early says at which epoch, a failed one says so."""
    parts = [plan_label(row.get("plan"))]
    if _number(row.get("params_ratio")) is not None:
        parts.append(f"p{row['params_ratio']:.3f}")
    if row.get("status") == "failed":
        parts.append("failed")
    elif _number(row.get("accuracy")) is not None:
        parts.append(f"acc{row['accuracy']:.3f}")
    if row.get("status") in ("pruned", "interrupted"):
        parts.append(f"{'stopped' if row['status'] == 'pruned' else 'interrupted'}@{row.get('epochs_trained')}" + (f"/{max_epochs}" if max_epochs else ""))
    parts.append(str(row["trial_id"]))
    return ("★ " if row.get("pareto") else "") + "·".join(parts)


def python_command() -> str:
    """``python`` when that is this interpreter on PATH, else this interpreter's full path."""
    on_path = shutil.which("python")
    if on_path and Path(on_path).resolve() == Path(sys.executable).resolve():
        return "python"
    return sys.executable


def export_command(search: Search, row: dict, *, out: str | None = None, fmt: str = "torch") -> str:
    """The exact command that exports ``row`` of ``search``."""
    suffix = ".onnx" if fmt == "onnx" else ".pt2"
    parts = [python_command(), "-m", "automl_factor.export", "--name", search.name, "--trial", row["trial_id"]]
    if search.storage != DEFAULT_STORAGE:
        parts += ["--storage-path", search.storage]
    if fmt != "torch":
        parts += ["--format", fmt]
    parts += ["--out", out or f"{search.name}-{row['trial_id']}{suffix}"]
    return " ".join(shlex.quote(part) for part in parts)
