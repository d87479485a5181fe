"""``python -m automl_factor.show``: the Pareto front of a search, one row per model, with the
command that exports it.

Reads the search's Parquet table (``<storage>/<name>/trials.parquet``, rewritten as each trial
ends), so it works while the search runs and needs neither Ray nor MLflow::

    python -m automl_factor.show                      # the latest search under ./automl_runs
    python -m automl_factor.show it --max-params 0.05 # the most accurate model within 5% of dense params
    python -m automl_factor.show it --min-accuracy 0.97   # the smallest model with >= 97% validation accuracy
    python -m automl_factor.show it --knee            # the knee of the accuracy-params front

"Best" and "knee" are defined once, in ``automl_factor.search.pick`` (shared with ``export --pick``):
the knee is the front model farthest from the straight line between the front's two extremes
(most accurate, smallest) when validation accuracy and params_ratio are each scaled to [0, 1] over
the front, i.e. the point past which more parameters buy little accuracy.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from .cli import DefaultsFormatter, Parser, fail
from .search.pick import (DEFAULT_STORAGE, Pick, PickError, Search, add_constraint_options,
                          constraints_from, export_command, open_search, pick, plan_summary)

HEADERS = {"accuracy": "val acc", "params_ratio": "params", "latency_ratio": "latency×dense"}


def parse_args(argv: list[str] | None = None):
    parser = Parser(prog="python -m automl_factor.show", description=__doc__.split("\n\n")[0],
                    formatter_class=DefaultsFormatter)
    parser.add_argument("name", nargs="?", default=None,
                        help="the search's --name (default: the search written most recently under --storage-path)")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE, help="where the search keeps its results")
    add_constraint_options(parser)
    parser.add_argument("--knee", action="store_true",
                        help="pick the knee of the accuracy-params front (within the constraints, if any)")
    parser.add_argument("--all", action="store_true",
                        help="list every trial (stopped early and failed too), not only the front")
    return parser.parse_args(argv)


def _objective_columns() -> list[tuple[str, Callable[[dict], str]]]:
    from .search.pareto import OBJECTIVES  # the search's own objective table: a new objective shows up here

    columns = []
    for objective in OBJECTIVES:
        def cell(row: dict, objective=objective) -> str:
            value = row.get(objective.name)
            if value is None:
                return "-"
            text = f"{value:.4f}" if objective.name != "latency_ratio" else f"{value:.2f}"
            noise = row.get(objective.noise) if objective.noise else None
            return text + (f" ±{100 * noise:.0f}%" if noise is not None else "")
        columns.append((HEADERS.get(objective.name, objective.name), cell))
    return columns


def _status(row: dict, max_epochs: int | None) -> str:
    if row["status"] == "complete":
        return "front" if row.get("pareto") else "complete"
    if row["status"] in ("pruned", "interrupted"):
        return f"{'stopped early' if row['status'] == 'pruned' else 'interrupted'} ({row.get('epochs_trained')}{f'/{max_epochs}' if max_epochs else ''} epochs)"
    return row["status"]


def format_table(search: Search, rows: list[dict], *, chosen: set[str] = frozenset(),
                 with_status: bool = False) -> str:
    """The rows as an aligned text table, the chosen trials marked with an arrow."""
    max_epochs = max((row.get("epochs_trained") or 0 for row in search.complete), default=None)

    def _number(key: str, digits: int) -> Callable[[dict], str]:
        return lambda row: "-" if row.get(key) is None else f"{row[key]:.{digits}f}"

    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("", lambda row: "→" if row["trial_id"] in chosen else ""), ("trial", lambda row: row["trial_id"])]
    if with_status:
        columns.append(("status", lambda row: _status(row, max_epochs)))
    columns += [*_objective_columns(), ("test acc", _number("test_accuracy", 4)), ("FLOPs", _number("flops_ratio", 3)),
                ("plan", lambda row: plan_summary(row.get("plan"))),
                ("export", lambda row: export_command(search, row) if row["status"] == "complete" else "-")]
    cells = [[header for header, _ in columns]] + [[cell(row) for _, cell in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


def _summary(search: Search) -> str:
    counts = {status: sum(row["status"] == status for row in search.rows)
              for status in ("complete", "pruned", "failed", "interrupted")}
    total = f" of {search.num_samples}" if search.num_samples else ""
    interrupted = f", {counts['interrupted']} interrupted" if counts["interrupted"] else ""
    state = "finished" if search.finished else "running or interrupted (the table grows as trials end)"
    return (f"search {search.name} ({search.uri}): {len(search.rows)}{total} trials done, {counts['complete']} "
            f"complete, {counts['pruned']} stopped early, {counts['failed']} failed{interrupted}; {state}")


def _describe(chosen: Pick) -> str:
    row = chosen.row
    latency = f", latency {row['latency_ratio']:.2f}× dense" if row.get("latency_ratio") is not None else ""
    test = f", test {row['test_accuracy']:.4f}" if row.get("test_accuracy") is not None else ""
    return (f"{chosen.reason}: trial {row['trial_id']} (val acc {row['accuracy']:.4f}{test}, params "
            f"{row['params_ratio']:.4f}{latency})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        search = open_search(args.storage_path, args.name)
        constraints = constraints_from(args)
        picks = []
        if args.knee:
            picks.append(pick(search, "knee", constraints))
        elif constraints:
            picks.append(pick(search, "best-under", constraints))
    except PickError as error:
        fail(str(error))
    chosen = {p.row["trial_id"] for p in picks}

    print(_summary(search))
    rows = sorted(search.rows, key=lambda row: (row["status"] != "complete", -(row.get("accuracy") or 0.0))) \
        if args.all else search.front
    # A pick off the front (e.g. a duplicate plan) is still listed, so its row and command are on screen.
    rows += [p.row for p in picks if p.row not in rows]
    if not search.front:
        print("front: no complete model yet" + (" (only trials stopped early or failed so far)" if search.rows else ""))
    else:
        plural = "s" if len(search.front) != 1 else ""
        print(f"front: {len(search.front)} model{plural} no other complete model beats in validation accuracy, "
              f"params and latency at once (3-D: in a 2-D view a front model may look dominated)")
    if rows:
        print()
        print(format_table(search, rows, chosen=chosen, with_status=args.all))
    for chosen_pick in picks:
        print(f"\n→ {_describe(chosen_pick)}\n  {export_command(search, chosen_pick.row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
