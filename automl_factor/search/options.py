"""The options of one search, typed: what the command line builds and what Python callers pass.

    from automl_factor.search import SearchOptions, run
    rows = run(SearchOptions(budget_fraction=0.1, num_samples=8, max_epochs=4))

Names say their units: ``budget_fraction`` is a fraction of the dense model's parameters
(``--budget-params`` on the command line), ``time_budget_s`` seconds, ``*_per_trial`` resources.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

__all__ = ["SearchOptions", "SAMPLERS", "SCHEDULERS"]

SAMPLERS = ("tpe", "nsga2", "gp", "random")  # Optuna samplers, all multi-objective (searcher.make_sampler)
SCHEDULERS = ("moasha", "asha", "fifo")
CHECKPOINT_EVERY_S = 60.0  # the default most training a retried or restored trial repeats, between rungs
# A search's name is one folder under the storage path (and the Tune experiment's name): no '/', no
# '..', no absolute path, so a search can neither write outside the storage path nor into another's.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SearchOptions(BaseModel):
    """Everything a search runs with besides its space file's contents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_fraction: float = Field(0.1, gt=0, le=1)  # keep at most this fraction of the dense parameters
    space: str | None = None  # a YAML file, or a name in search_spaces/; None: default.yaml
    num_samples: int = Field(32, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    sampler: Literal[SAMPLERS] = "tpe"
    scheduler: Literal[SCHEDULERS] = "moasha"
    max_epochs: int | None = Field(None, ge=1)  # None: the space's
    grace_period: int | None = Field(None, ge=1)  # epochs; None: a third of max_epochs
    reduction_factor: float = Field(3.0, gt=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float | None = Field(None, ge=0)  # None: 0.25 when the cluster has GPUs, else 0
    max_concurrent: int | None = Field(None, ge=1)
    address: str | None = None  # an existing Ray cluster; None: a local runtime on 127.0.0.1
    storage_path: str = "./automl_runs"
    name: str | None = None  # None: a timestamp (with resume: the latest search)
    mlflow_uri: str = "sqlite:///mlflow.db"
    experiment: str = "automl-factor"
    warm_start: bool = True  # the paper's recipe as the first trial
    seed: int = 0
    resume: bool = False
    compile: bool | None = None  # torch.compile the training step; None: on for GPU trials
    checkpoint_every_s: float = Field(CHECKPOINT_EVERY_S, ge=0)  # the most training a lost worker costs a trial; 0: every epoch

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and not PLAIN_NAME.fullmatch(name):
            raise PydanticCustomError("plain_name", "must be a plain name: letters, digits, '.', '_' and '-', "
                                                    "starting with a letter or digit (no '/', no '..')")
        return name

