"""Renders merged results into one self-contained HTML page.

Every value from a record goes through Jinja's autoescaping, including what ends up inside the SVG plots:
result files come from CI jobs and user cases, and must not be able to inject markup into the artifact.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined

from conformance.report import formatting, outcomes, summaries
from conformance.report.loader import Results
from conformance.report.matrix import build_matrix
from conformance.report.pairwise import axis_views, pair_tables
from conformance.report.plots import Figure, trajectory_figure


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("conformance.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        number=formatting.number,
        seconds=formatting.seconds,
        json_text=formatting.json_text,
        web_link=formatting.web_link,
    )
    environment.globals.update(
        symbol=outcomes.SYMBOL,
        label=outcomes.LABEL,
        meaning=outcomes.MEANING,
        order=outcomes.ORDER,
        trajectory_figure=trajectory_figure,
        pair_tables=pair_tables,
    )
    return environment


class SharedFigures:
    """Draws each distinct figure once and reuses it with <use>: whole-pixel geometry makes the plots of
    backends that agree identical, and a case may have dozens of them."""

    def __init__(self) -> None:
        self._ids: dict[Figure, str] = {}

    def __call__(self, figure: Figure) -> tuple[str, bool]:
        """The figure's id, and whether this is its first appearance (where it must be drawn)."""
        if figure in self._ids:
            return self._ids[figure], False
        self._ids[figure] = f"fig{len(self._ids)}"
        return self._ids[figure], True


def render_report(results: Results) -> str:
    """The page as text: header, scoreboard, matrix, known differences, what did not run, and details."""
    matrix = build_matrix(results.records)
    started = sorted(str(run.header["started"]) for run in results.runs if run.header.get("started"))
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            warnings=results.warnings,
            records=len(results.records),
            runs=summaries.run_views(results.runs, results.records),
            started=started,
            counts=summaries.outcome_counts(results.records),
            scores=summaries.scoreboard(results.records),
            matrix=matrix,
            known=summaries.known_differences(matrix),
            not_run=summaries.not_run(matrix),
            axes=axis_views(results.records),
            shared=SharedFigures(),
        )
    )
