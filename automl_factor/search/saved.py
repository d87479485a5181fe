"""What a search saves about itself (``search.json``) and how ``--resume`` reads it back.

A resumed search is the same search continued: its settings come from the saved options, not from
today's defaults. A flag given on the resume command line that differs from the saved value is
refused (one line naming each), so "resume with the printed command" can never quietly train
under other settings. Only where the search runs may change: the cluster (``--address``). (The time
budget and concurrency are part of what Ray restores, so they cannot change either.) Imports
neither Ray nor MLflow.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from ..cli import UsageError
from .options import SearchOptions

__all__ = ["STATE_FILE", "read_state", "write_state", "resumed_options", "saved_form", "absolute_store"]

STATE_FILE = "search.json"  # parent run id, tracking store and options: for --resume, show and export
# Options a resume may set anew: where it runs, how often trials checkpoint, and which search it is.
FROM_RESUME_COMMAND = ("resume", "name", "storage_path", "address", "checkpoint_every_s")


def _location(run_uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(run_uri if "://" in run_uri else Path(run_uri).resolve().as_uri())


def read_state(run_uri: str) -> dict | None:
    """The saved state of the search at ``run_uri``, or None when it has none."""
    filesystem, path = _location(run_uri)
    if filesystem.get_file_info(f"{path}/{STATE_FILE}").type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(f"{path}/{STATE_FILE}") as stream:
        return json.loads(stream.read())


def write_state(run_uri: str, state: dict) -> None:
    filesystem, path = _location(run_uri)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path}/{STATE_FILE}.tmp") as stream:
        stream.write(json.dumps(state, indent=1).encode())
    filesystem.move(f"{path}/{STATE_FILE}.tmp", f"{path}/{STATE_FILE}")  # never half-written


def saved_form(options: SearchOptions) -> dict:
    """The options as saved: paths made absolute, so a resume from another folder means the same."""
    from .prepare import resolve_space  # (prepare imports this module's neighbours, not Ray)

    saved = options.model_dump()
    saved["space"] = str(resolve_space(options.space).resolve())
    saved["mlflow_uri"] = absolute_store(options.mlflow_uri)
    if "://" not in options.storage_path:
        saved["storage_path"] = str(Path(options.storage_path).resolve())
    return saved


def resumed_options(options: SearchOptions, run_uri: str, name: str) -> SearchOptions:
    """``options`` for ``--resume`` of the search at ``run_uri``: the saved settings, with the
    resume command's own choices (``FROM_RESUME_COMMAND``). A flag set to something other than
    its default and the saved value raises ``UsageError``."""
    state = read_state(run_uri)
    if state is None:
        raise UsageError(f"--resume: no search named {name!r} under --storage-path {options.storage_path!r} "
                         f"(no {STATE_FILE} in {run_uri})")
    saved, given, defaults = state["options"], options.model_dump(), SearchOptions().model_dump()
    comparable = {**given, "mlflow_uri": absolute_store(given["mlflow_uri"])}
    if given["space"] is not None:
        from .prepare import resolve_space
        comparable["space"] = str(resolve_space(given["space"]).resolve())
    differing = [key for key in saved if key not in FROM_RESUME_COMMAND and given.get(key) != defaults.get(key)
                 and comparable.get(key) != saved[key]]
    if differing:
        flags = ", ".join(f"{_flag(key)} {given[key]} (saved: {saved[key]})" for key in differing)
        raise UsageError(f"--resume continues search {name!r} with its saved settings, but these flags differ: "
                         f"{flags}; drop them, or start a new search with another --name")
    merged = {key: value for key, value in saved.items() if key in SearchOptions.model_fields}
    merged.update({key: given[key] for key in FROM_RESUME_COMMAND if key != "storage_path"})
    merged["name"] = name
    return SearchOptions(**merged)


def _flag(field: str) -> str:
    return "--budget-params" if field == "budget_fraction" else "--" + field.replace("_", "-")


def absolute_store(uri: str) -> str:
    """A tracking URI that means the same from any folder: sqlite and file paths made absolute."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//")).resolve().as_uri()
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri
