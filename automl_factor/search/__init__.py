"""The search service: Ray Tune trials, Optuna samplers, MO-ASHA, Pareto fronts in MLflow.

With export.py, the only part of the package that imports Ray or MLflow (and only when a search runs)::

    from automl_factor.search import SearchOptions, run
    rows = run(SearchOptions(budget_fraction=0.1, num_samples=8))
"""
from __future__ import annotations

from .options import SearchOptions

__all__ = ["SearchOptions", "run"]


def run(options: SearchOptions) -> list[dict]:
    """Run (or resume) a search and return its trial rows; prints progress and the front as the
    command line does. Bad input raises ``automl_factor.cli.UsageError`` before anything is written."""
    from .prepare import prepare
    from .run import print_front, run_search

    prepared = prepare(options)
    rows, noise = run_search(prepared)
    options = prepared.options  # with --resume: the saved settings
    print_front(rows, options.mlflow_uri, budget=options.budget_fraction, noise=noise, run_uri=prepared.run_uri)
    return rows
