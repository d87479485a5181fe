"""Everything a search checks before it writes anything: options, tracking store, cluster address,
the space, the data and the budget. Imports neither Ray nor MLflow, so bad input fails fast."""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..cli import UsageError
from .options import SearchOptions

__all__ = ["Prepared", "prepare", "DEFAULT_SPACE", "resolve_space", "check_mlflow_uri", "check_address"]

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPACE = SPACES / "default.yaml"


def resolve_space(space: str | None) -> Path:
    """A space file: the path given, else that name in search_spaces/ (with or without .yaml)."""
    if space is None:
        return DEFAULT_SPACE
    path = Path(space)
    if path.is_file():
        return path
    for candidate in (SPACES / space, SPACES / f"{space}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
    raise UsageError(f"--space {space!r} does not exist as a file or as a shipped space; shipped: {shipped}")


def check_mlflow_uri(uri: str) -> None:
    """Fail early (exit 2) when the tracking store cannot be reached."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as error:
            raise UsageError(f"--mlflow-uri {uri!r} is unreachable ({getattr(error, 'reason', error)}); "
                             f"start a server or use sqlite:///PATH or a folder")
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise UsageError(f"--mlflow-uri {uri!r}: folder {str(folder)!r} does not exist")
    elif parsed.scheme not in ("", "file", "databricks", "postgresql", "mysql", "mssql"):
        raise UsageError(f"--mlflow-uri {uri!r}: unsupported scheme {parsed.scheme!r}; "
                         f"use http(s)://, sqlite:///, file: or a folder")


def check_address(address: str | None) -> None:
    """Fail early when --address names a host:port nobody listens on."""
    if address in (None, "auto", "local"):
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address must look like host:port, ray://host:port or 'auto', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UsageError(f"--address {address!r} is unreachable ({error.strerror or error}); is the Ray head running?")


@dataclass
class Prepared:
    """Everything validated before anything is written or started."""

    options: SearchOptions
    space: object
    space_text: str
    data: object
    dense_params: int
    name: str
    run_uri: str


def prepare(options: SearchOptions) -> Prepared:
    """Validate input, load the data and check the budget can be met; writes nothing.
    Bad input raises ``UsageError`` (the command line prints it as one line, exit 2)."""
    from ..factorization import count_params
    from ..train import build_model, load, load_weights
    from .space import group_layers, load_space, minimum_params

    space_path = resolve_space(options.space)
    check_mlflow_uri(options.mlflow_uri)
    check_address(options.address)
    try:
        space = load_space(space_path)
        if options.max_epochs is not None:
            space = space.model_copy(update={"max_epochs": options.max_epochs})
        if options.compile is not None:
            space = space.model_copy(update={"recipe": space.recipe.model_copy(update={"compile": options.compile})})
        data = load(space.data.name, root=space.data.root, val_fraction=space.data.val_fraction,
                    train_subset=space.data.train_subset, test_subset=space.data.test_subset,
                    download=space.data.download, seed=options.seed)
        dense = build_model(space.model, data, **space.model_kwargs)
        if space.weights is not None:  # checked now, and made absolute: trials run in other folders
            weights = str(Path(space.weights).expanduser().resolve())
            load_weights(dense, weights)
            space = space.model_copy(update={"weights": weights})
        group_layers(space, dense)
        smallest, budget = minimum_params(space, dense), options.budget_fraction * count_params(dense)
        if smallest > budget:
            raise UsageError(f"--budget-params {options.budget_fraction:g} is too small for {space.model}: "
                             f"{budget:,.0f} parameters, but the layers left dense plus rank 1 everywhere need "
                             f"{smallest:,} ({smallest / count_params(dense):.4f} of dense)")
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from None
    name, run_uri = _run_location(options)
    return Prepared(options, space, space_path.read_text(), data, count_params(dense), name, run_uri)


def _run_location(options) -> tuple[str, str]:
    storage = options.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if options.resume and not options.name:
        import pyarrow.fs as pafs
        filesystem, path = pafs.FileSystem.from_uri(storage if "://" in storage else Path(storage).as_uri())
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        names = sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)
        if not names:
            raise UsageError(f"--resume: no search to resume under {options.storage_path!r}")
        return names[-1], f"{storage.rstrip('/')}/{names[-1]}"
    name = options.name or time.strftime("search-%Y%m%d-%H%M%S")
    return name, f"{storage.rstrip('/')}/{name}"


