"""The answers as tables: one `Table` per answer, built from the JSON-able answers dict, and
rendered as plain text, markdown, csv or json. Every format has the same columns and the same
numbers (text and markdown round them for reading; csv and json keep every digit)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forgetlab.answers.points import format_value, setting_text
from forgetlab.errors import ForgetlabError

FORMATS = ("table", "markdown", "csv", "json")


def _fixed(v: Any) -> str:
    return f"{v:.3f}"


def _signed(v: Any) -> str:
    return f"{v:+.3f}"


def _p(v: Any) -> str:
    return f"{v:.3g}"


def _text(v: Any) -> str:
    return format_value(v)


@dataclass
class Column:
    name: str
    show: Callable[[Any], str] = _text
    missing: str = "n/a"  # what text and markdown print for None (csv: empty, json: null)


@dataclass
class Table:
    key: str
    title: str
    columns: list[Column]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        return [
            [c.missing if v is None else c.show(v) for c, v in zip(self.columns, row)]
            for row in self.rows
        ]


def _mean(stat: dict) -> Any:
    return stat["mean"]


def best_rows(best: dict, learning: str, forgetting: str) -> Table:
    ref = best["reference"]
    rate = best["rate_key"]
    columns = [
        Column("method"),
        Column("points"),
        Column("best setting", missing=""),
        Column("seeds"),
        Column(f"learning ({learning})", _fixed),
        Column("learning ±CI95", _fixed),
        Column(f"forgetting ({forgetting})", _signed),
        Column("forgetting ±CI95", _fixed),
        *([Column(f"gap to {ref}", _signed)] if ref else []),
        Column(f"{rate} window from", missing=""),
        Column(f"{rate} window to", missing=""),
        Column("edge", missing=""),
    ]
    rows = []
    for r in best["rows"]:
        window = r["window"] or {}
        rows.append(
            [
                r["method"],
                r["points"],
                setting_text(r["settings"]) or None,
                len(r["seeds"]),
                _mean(r["learning"]),
                r["learning"]["ci95"],
                _mean(r["forgetting"]),
                r["forgetting"]["ci95"],
                *([r["gap"]] if ref else []),
                window.get("lo"),
                window.get("hi"),
                "yes" if r["edge"] else None,
            ]
        )
    title = f"Best setting per method (by {best['metric']})"
    notes = [
        f"±CI95 = half-width of the 95% Student-t interval over seeds; window = the {rate} "
        f"values whose best {best['metric']} is within {best['tolerance']:g} of the peak",
        *best["notes"],
    ]
    return Table("best", title, columns, rows, notes)


def frontier_rows(frontier: dict) -> Table:
    columns = [
        Column("point"),
        Column("learning", _fixed),
        Column("forgetting", _signed),
        Column("frontier"),
        Column("method frontier"),
    ]
    rows = [
        [p["label"], p["learning"], p["forgetting"], p["frontier"], p["method_frontier"]]
        for p in frontier["points"]
    ]
    return Table("frontier", "Learning–forgetting frontier (means over seeds)", columns, rows)


def hypervolume_rows(frontier: dict) -> Table:
    ref = frontier["reference_point"]
    note = (
        f"reference point: learning {ref['learning']:.4g}, forgetting {ref['forgetting']:.4g} "
        f"({ref['chosen']})"
    )
    rows = [[m, v] for m, v in frontier["hypervolume"].items()]
    columns = [Column("method"), Column("hypervolume", lambda v: f"{v:.4g}")]
    return Table("hypervolume", "Hypervolume per method", columns, rows, [note])


def _pm(value: float, ci: list[float] | None) -> str:
    if ci is None:
        return f"{value:+.3f}"
    return f"{value:+.3f} (95% CI {ci[0]:+.3f} … {ci[1]:+.3f})"


def matched_sentences(matched: dict) -> list[str]:
    """ "at learning 0.68, lora forgets … , full …" per level, methods that do not reach it
    named as such."""
    lines = []
    for level in matched["levels"]:
        parts = []
        for r in (r for r in matched["rows"] if r["level"] == level):
            if r["reached"]:
                parts.append(f"{r['method']} forgets {_pm(r['forgetting'], r['ci95'])}")
            else:
                parts.append(f"{r['method']} does not reach it")
        lines.append(f"at learning {level:.3f}: " + "; ".join(parts))
    return lines


def matched_rows(matched: dict) -> Table:
    columns = [
        Column("learning level", _fixed),
        Column("method"),
        Column("forgetting", _signed, missing="not reached"),
        Column("95% CI from", _signed, missing=""),
        Column("95% CI to", _signed, missing=""),
        Column("resamples reaching it"),
    ]
    rows = [
        [
            r["level"],
            r["method"],
            r["forgetting"],
            *(r["ci95"] or [None, None]),
            r["replicates_reaching"],
        ]
        for r in matched["rows"]
    ]
    notes = [
        *matched_sentences(matched),
        f"isotonic fit per method; bootstrap over seeds: {matched['resamples']} resamples, "
        f"seed {matched['seed']}, the CI over the resamples that reach the level; a level "
        "outside a method's learning range is not reached (never extrapolated)",
        *matched["notes"],
    ]
    title = "Forgetting at matched learning"
    return Table("matched", title, columns, rows, notes)


def difference_rows(matched: dict) -> Table:
    columns = [
        Column("learning level", _fixed),
        Column("a"),
        Column("b"),
        Column("forgetting a − b", _signed),
        Column("95% CI from", _signed, missing=""),
        Column("95% CI to", _signed, missing=""),
    ]
    rows = [
        [d["level"], d["a"], d["b"], d["difference"], *(d["ci95"] or [None, None])]
        for d in matched["differences"]
    ]
    title = "Forgetting differences at matched learning (levels both reach)"
    return Table("matched_differences", title, columns, rows)


def paired_rows(paired: list[dict], key: str = "paired", title: str | None = None) -> Table:
    columns = [
        Column("a"),
        Column("b"),
        Column("metric"),
        Column("seeds"),
        Column("mean a − b", _signed),
        Column("t", _p),
        Column("p (t)", _p),
        Column("W", _p),
        Column("p (Wilcoxon)", _p),
    ]
    rows = [
        [
            r["a"],
            r["b"],
            r["metric"],
            r["n"],
            r["mean_difference"],
            r["t"],
            r["t_p"],
            r["wilcoxon"],
            r["wilcoxon_p"],
        ]
        for r in paired
    ]
    notes = sorted({f"{r['a']} vs {r['b']}: {n}" for r in paired for n in r["notes"]})
    title = title or "Paired tests at each method's best point (two-sided, common seeds)"
    return Table(key, title, columns, rows, notes)


# ---- rendering ---------------------------------------------------------------------------


def _text_table(t: Table) -> str:
    header = [c.name for c in t.columns]
    body = t.cells()
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [t.title, ""]
    lines += ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in body]
    lines += [f"  {n}" for n in t.notes]
    return "\n".join(lines)


def _markdown_table(t: Table) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {t.title}", "", row([c.name for c in t.columns])]
    lines += [row(["---"] * len(t.columns)), *(row(r) for r in t.cells())]
    if t.notes:
        lines += ["", *(f"- {n}" for n in t.notes)]
    return "\n".join(lines)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else v


def _csv_table(t: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in t.columns])
    writer.writerows([[_csv_cell(v) for v in row] for row in t.rows])
    return buffer.getvalue().rstrip("\n")


def _json_table(t: Table) -> dict[str, Any]:
    names = [c.name for c in t.columns]
    return {
        "title": t.title,
        "columns": names,
        "rows": [dict(zip(names, row)) for row in t.rows],  # pandas.DataFrame(rows)
        "notes": t.notes,
    }


def render(tables: Sequence[Table], fmt: str) -> str:
    """Tables as `fmt`: table (plain text), markdown, csv (one block per table, each after a
    `# <key>: <title>` line) or json ({key: {title, columns, rows: [{column:
    value}], notes}})."""
    if fmt not in FORMATS:
        raise ForgetlabError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "json":
        return json.dumps({t.key: _json_table(t) for t in tables}, indent=2, ensure_ascii=False)
    if fmt == "csv":
        return "\n\n".join(f"# {t.key}: {t.title}\n{_csv_table(t)}" for t in tables)
    draw = _text_table if fmt == "table" else _markdown_table
    return "\n\n".join(draw(t) for t in tables)
