"""Pictures of a search's front: an interactive HTML page (plotly) and static PNGs (matplotlib).

Both draw every trial, styled by status (on the front, complete, stopped early, failed), in the 2-D
projections of the objective table ``pareto.OBJECTIVES``: the first objective (accuracy) against
each of the others. The front's models are labeled with their trial ids (what ``show`` prints and
``export --trial`` takes). The other objectives are ratios to the dense model, so a line at 1 marks
dense; an objective read per budget (params) also gets a line at the budget. The front is 3-D, so
a front model may look dominated in one projection: both pictures say so.

The HTML page is self-contained (plotly.js inline: it opens from a file, offline, and inline in
MLflow's artifact view). Hovering a point shows its trial id, plan, objectives, FLOPs and the
command that exports it; a table of the front below the plot holds the same commands to copy.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from .pareto import OBJECTIVES, Objective  # noqa: E402
from .pick import model_name, plan_summary  # noqa: E402

__all__ = ["STATUSES", "status_of", "front_figure", "front_html", "front_pngs"]

# (label, plotly marker, matplotlib style), drawn in this order so the front is on top.
STATUSES = {
    "stopped early": (dict(symbol="circle-open", size=8, color="#8c8c8c"),
                      dict(marker="o", s=30, facecolors="none", edgecolors="#8c8c8c")),
    "failed": (dict(symbol="x", size=9, color="#222222"), dict(marker="x", s=40, color="#222222")),
    "complete": (dict(symbol="circle", size=9, color="#4c78a8", opacity=0.85),
                 dict(marker="o", s=40, color="#4c78a8", alpha=0.85)),
    "front": (dict(symbol="star", size=15, color="#e45756", line=dict(width=1, color="#7a1f1f")),
              dict(marker="*", s=180, color="#e45756", edgecolors="#7a1f1f", linewidths=0.6, zorder=5)),
}
THREE_D_NOTE = ("The front is 3-D (accuracy, params, latency): in a 2-D projection a front model "
                "may look dominated by one that is worse on the objective not shown.")
ExportCommand = Callable[[dict], str]
# Front labels take turns above, below, right and left of their points, so near neighbours stay legible.
LABEL_PLACES = (("top center", (0, 8)), ("bottom center", (0, -14)), ("middle right", (9, -3)),
                ("middle left", (-9, -3)))


def status_of(row: dict) -> str:
    if row["status"] == "complete":
        return "front" if row.get("pareto") else "complete"
    return {"pruned": "stopped early", "interrupted": "interrupted"}.get(row["status"], "failed")


def _accuracy() -> Objective:
    return OBJECTIVES[0]


def _projections() -> tuple[Objective, ...]:
    return OBJECTIVES[1:]


def _placed(rows: Sequence[dict], objective: Objective) -> list[dict]:
    """Rows with both coordinates of the projection (a trial that failed early may have none)."""
    return [row for row in rows if _finite(row.get(_accuracy().name)) and _finite(row.get(objective.name))]


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _references(objective: Objective, budget: float) -> list[tuple[float, str]]:
    """Vertical reference lines: dense at 1 (the objectives are ratios to dense), the budget for
    an objective read per budget."""
    lines = [(1.0, "dense")]
    if objective.per_budget:
        lines.append((budget, f"budget {budget:g}"))
    return lines


def _legend_label(rows: Sequence[dict], placed: Sequence[dict], status: str) -> str:
    """``failed (3)``, saying how many of them have no point (no metrics to place them by)."""
    count = sum(status_of(row) == status for row in rows)
    missing = count - sum(status_of(row) == status for row in placed)
    return f"{status} ({count}{f', {missing} without metrics, not drawn' if missing else ''})"


def _axis_title(objective: Objective) -> str:
    return f"{objective.name} ({objective.unit}, {'higher' if objective.direction == 'max' else 'lower'} is better)"


def _hover(row: dict, export_command: ExportCommand | None, max_epochs: int | None) -> str:
    def number(key: str, digits: int) -> str:
        return f"{row[key]:.{digits}f}" if _finite(row.get(key)) else "-"

    noise = f" ±{100 * row['latency_ratio_spread']:.0f}%" if _finite(row.get("latency_ratio_spread")) else ""
    epochs = f"{row.get('epochs_trained')}" + (f"/{max_epochs}" if max_epochs else "")
    lines = [f"<b>trial {row['trial_id']}</b> · {status_of(row)} · {epochs} epochs",
             html.escape(plan_summary(row.get("plan"))),
             f"val acc {number('accuracy', 4)} (test {number('test_accuracy', 4)})",
             f"params {number('params_ratio', 4)} of dense · FLOPs {number('flops_ratio', 3)} of dense",
             f"latency {number('latency_ratio', 2)}× dense{noise} ({number('latency_ms', 3)} ms)"]
    if row["status"] == "failed" and row.get("reason"):
        lines.append(html.escape(f"failed: {row['reason'][:120]}"))
    if export_command and row["status"] == "complete":
        lines.append(f"<i>{html.escape(export_command(row))}</i>")
    return "<br>".join(lines)


def front_figure(rows: Sequence[dict], *, budget: float, hypervolume: Sequence[tuple[float, float]] = (),
                 export_command: ExportCommand | None = None, title: str = "", max_epochs: int | None = None):
    """The plotly figure: one panel per projection, and the hypervolume over time below them."""
    from plotly.subplots import make_subplots

    projections = _projections()
    accuracy = _accuracy()
    figure = make_subplots(
        rows=2, cols=len(projections), row_heights=[0.68, 0.32], vertical_spacing=0.16, horizontal_spacing=0.08,
        specs=[[{} for _ in projections], [{"colspan": len(projections)}] + [None] * (len(projections) - 1)],
        subplot_titles=[f"{accuracy.name} vs {o.name}" for o in projections]
        + ["hypervolume of the complete trials as they finished (higher is better)"])
    for column, objective in enumerate(projections, start=1):
        placed = _placed(rows, objective)
        for status, (marker, _) in STATUSES.items():
            members = sorted((row for row in placed if status_of(row) == status),
                             key=lambda row: row[objective.name])
            figure.add_scatter(
                x=[row[objective.name] for row in members], y=[row[accuracy.name] for row in members],
                mode="markers+text" if status == "front" else "markers",
                text=[row["trial_id"] for row in members] if status == "front" else None,
                textposition=[LABEL_PLACES[i % 4][0] for i in range(len(members))],
                textfont=dict(size=11, color="#7a1f1f"),
                marker=marker, name=_legend_label(rows, placed, status), legendgroup=status, showlegend=column == 1,
                hovertext=[_hover(row, export_command, max_epochs) for row in members],
                hovertemplate="%{hovertext}<extra></extra>", row=1, col=column)
        for x, label in _references(objective, budget):
            color = "#555555" if label == "dense" else "#e08a00"
            figure.add_vline(x=x, line_dash="dash", line_color=color, row=1, col=column)
            # (annotations on a log axis are placed in log10 units, lines in data units)
            figure.add_annotation(x=math.log10(x) if objective.per_budget else x, y=0.0, yref="y domain", text=label,
                                  showarrow=False, xanchor="right", yanchor="bottom",
                                  font=dict(size=11, color=color), row=1, col=column)
        figure.update_xaxes(title_text=_axis_title(objective), type="log" if objective.per_budget else "linear",
                            row=1, col=column)
        figure.update_yaxes(title_text=_axis_title(accuracy) if column == 1 else None, row=1, col=column)
    minutes = [seconds / 60 for seconds, _ in hypervolume]
    figure.add_scatter(x=minutes, y=[value for _, value in hypervolume], mode="lines+markers", line_shape="hv",
                       name="hypervolume", showlegend=False, marker=dict(size=5, color="#54a24b"),
                       hovertemplate="%{x:.1f} min: hypervolume %{y:.4f}<extra></extra>",
                       row=2, col=1)
    figure.update_xaxes(title_text="minutes since the first trial started", row=2, col=1)
    figure.update_yaxes(title_text="hypervolume", row=2, col=1)
    figure.update_layout(
        title=dict(text=f"{html.escape(title)}<br><sup>{THREE_D_NOTE}</sup>", x=0.01),
        legend=dict(orientation="h", yanchor="bottom", y=1.04, xanchor="right", x=1.0, title_text="trials: "),
        height=820, margin=dict(t=130, l=70, r=30, b=60), template="plotly_white", hoverlabel=dict(align="left"))
    return figure


def front_html(rows: Sequence[dict], *, budget: float, hypervolume: Sequence[tuple[float, float]] = (),
               export_command: ExportCommand | None = None, title: str = "", max_epochs: int | None = None) -> str:
    """A self-contained HTML page: the interactive figure, then the front as a table with export commands."""
    figure = front_figure(rows, budget=budget, hypervolume=hypervolume, export_command=export_command, title=title,
                          max_epochs=max_epochs)
    plot = figure.to_html(full_html=False, include_plotlyjs=True, div_id="front",
                          config={"displaylogo": False, "responsive": True})
    front = sorted((row for row in rows if status_of(row) == "front"), key=lambda row: -row["accuracy"])
    headers = ["trial", "model", *(o.name for o in OBJECTIVES), "test acc", "FLOPs", "plan", "export"]
    body = []
    for row in front:
        cells = [row["trial_id"], model_name(row, max_epochs=max_epochs)]
        cells += [f"{row[o.name]:.4f}" if _finite(row.get(o.name)) else "-" for o in OBJECTIVES]
        cells += [f"{row['test_accuracy']:.4f}" if _finite(row.get("test_accuracy")) else "-",
                  f"{row['flops_ratio']:.3f}" if _finite(row.get("flops_ratio")) else "-",
                  plan_summary(row.get("plan")), export_command(row) if export_command else ""]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells[:-1])
                    + f"<td><code>{html.escape(cells[-1])}</code></td></tr>")
    table = ("<table id='front-table'><thead><tr>" + "".join(f"<th>{h}</th>" for h in headers)
             + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>") if body else "<p>No complete model yet.</p>"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title or "Pareto front")}</title>
<style>body{{font-family:sans-serif;margin:12px;overflow-x:hidden}}
table{{border-collapse:collapse;font-size:13px;width:100%}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;overflow-wrap:anywhere}} code{{font-size:12px}}</style>
</head>
<body>{plot}
<h3>The front ({len(front)} models, most accurate first)</h3>
<p>{html.escape(THREE_D_NOTE)}</p>
{table}
</body></html>
"""


def front_pngs(rows: Sequence[dict], *, budget: float, title: str = "") -> dict:
    """Static versions for MLflow's image view: ``accuracy_vs_<objective>.png`` -> matplotlib figure.
    Every trial drawn, the front labeled, the legend outside the data, dense and budget marked."""
    accuracy = _accuracy()
    figures = {}
    for objective in _projections():
        placed = _placed(rows, objective)
        figure, axes = plt.subplots(figsize=(8.5, 5))
        for status, (_, style) in STATUSES.items():
            members = sorted((row for row in placed if status_of(row) == status),
                             key=lambda row: row[objective.name])
            axes.scatter([row[objective.name] for row in members], [row[accuracy.name] for row in members],
                         label=_legend_label(rows, placed, status), **style)
            if status == "front":
                for i, row in enumerate(members):
                    offset = LABEL_PLACES[i % 4][1]
                    axes.annotate(row["trial_id"], (row[objective.name], row[accuracy.name]), fontsize=8,
                                  color="#7a1f1f", xytext=offset, textcoords="offset points",
                                  ha="left" if offset[0] > 0 else "right" if offset[0] < 0 else "center")
        for x, label in _references(objective, budget):
            color = "#555555" if label == "dense" else "#e08a00"
            axes.axvline(x, color=color, linestyle="--", linewidth=1)
            axes.annotate(label, (x, 0.0), xycoords=("data", "axes fraction"), xytext=(-3, 4),
                          textcoords="offset points", ha="right", fontsize=8, color=color)
        if objective.per_budget:
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        axes.set_xlabel(_axis_title(objective))
        axes.set_ylabel(_axis_title(accuracy))
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="trials", fontsize=8)
        figure.text(0.01, 0.01, THREE_D_NOTE, fontsize=7, color="#555555")
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        figures[f"accuracy_vs_{objective.name.split('_')[0]}.png"] = figure
    return figures
