"""The report's Answers section: the same tables and numbers as `forgetlab.answers` (and
`forgetlab compare`), its two figures, when it is left out or reduced to one line, and
escaping of what users named."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from forgetlab import api
from forgetlab.answers import answer_tables, answers, compare_answers, format_answers
from forgetlab.answers.assemble import SECTIONS
from forgetlab.report import page as page_module
from forgetlab.report.answers_section import answers_view
from forgetlab.report.data import load_runs
from forgetlab.report.page import build_report, figures_dir, render_page
from forgetlab.report.screenshot import CHROMIUM_ARGS, chromium_path
from tests.answers_fixtures import write_run

# A method name is a user string: it reaches the tables, the labels and the figures.
XSS_METHOD = "<img src=x onerror=alert(1)>"
# (learning, forgetting) per learning rate. Full FT peaks on the highest rate tried (an edge
# warning); LoRA peaks inside its grid; the XSS-named method has one point (no curve).
FULL = {1e-5: (0.60, 0.02), 3e-5: (0.70, 0.05), 1e-4: (0.80, 0.20)}
LORA = {1e-3: (0.55, 0.03), 3e-3: (0.68, 0.08), 1e-2: (0.66, 0.12)}
ODD = {1e-3: (0.58, 0.01)}
PNG = b"\x89PNG\r\n\x1a\n"


def spread(learning: float, forgetting: float) -> dict[int, tuple[float, float]]:
    """Three seeds around (learning, forgetting), not equally spaced (the paired tests get a
    spread of differences)."""
    offsets = ((-0.006, -0.003), (0.001, 0.002), (0.005, 0.001))
    return {s: (learning + dl, forgetting + df) for s, (dl, df) in enumerate(offsets, 1)}


def write_grid(root: Path) -> list[Path]:
    runs = []
    for method, grid in (("full", FULL), ("lora", LORA), (XSS_METHOD, ODD)):
        for lr, value in grid.items():
            name = f"{'odd' if method == XSS_METHOD else method}-{lr:g}"
            runs.append(write_run(root, name, method, spread(*value), lr=lr))
    return runs


class _Page(HTMLParser):
    """Tables (rows of cell texts, unescaped) and images (attributes) in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str | None]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parsed(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def section(page: str) -> str:
    return page.split('<section id="answers">')[1].split("</section>")[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[list[Path], Path, str]:
    root = tmp_path_factory.mktemp("answers-report")
    runs = write_grid(root / "runs")
    out = build_report(runs, root / "report.html")
    return runs, out, out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def result(grid) -> dict:
    return answers(grid[0])  # the report's own call: the defaults


def expected_rows(table) -> tuple[list[str], list[list[str]]]:
    """What the HTML should show for an answers table: the text format's cells, each mean
    joined with the ±CI95 column after it, booleans as yes/no."""
    names = [c.name for c in table.columns]
    header, rows = [], [[] for _ in table.rows]
    for i, name in enumerate(names):
        if name.endswith(" ±CI95"):
            continue
        joined = i + 1 < len(names) and names[i + 1].endswith(" ±CI95")
        header.append(f"{name} ± CI95" if joined else name)
        for row, values, cells in zip(rows, table.rows, table.cells()):
            text = cells[i]
            if isinstance(values[i], bool):  # the frontier flags
                text = "yes" if values[i] else "no"
            ci = joined and values[i + 1] is not None
            row.append(f"{text} ± {cells[i + 1]}" if ci else text)
    return header, rows


def test_section_tables_are_the_answers_tables(grid, result):
    _, _, page = grid
    assert result["matched"]["spans_enough"]  # the runs span enough: matched is shown
    tables = answer_tables(result, SECTIONS)
    shown = parsed(section(page)).tables
    assert len(shown) == len(tables)
    for table, html_rows in zip(tables, shown):
        header, rows = expected_rows(table)
        assert html_rows[0] == header, table.key
        assert html_rows[1:] == rows, table.key
        for note in table.notes:
            assert html.escape(note, quote=True) in section(page), note


def test_numbers_match_the_json_tables_and_compare(grid, result):
    runs, _, page = grid
    body = section(page)
    shown = parsed(body).tables
    keys = [t.key for t in answer_tables(result, SECTIONS)]
    by_key = dict(zip(keys, shown))
    tables = json.loads(format_answers(result, "json"))
    # best: mean ± CI of learning and forgetting, as in answers()
    header, *rows = by_key["best"]
    col = header.index("learning (initial_acc) ± CI95")
    for jrow, hrow in zip(tables["best"]["rows"], rows):
        learning = f"{jrow['learning (initial_acc)']:.3f} ± {jrow['learning ±CI95']:.3f}"
        assert hrow[0] == jrow["method"] and hrow[col] == learning
    best = {r["method"]: r for r in result["best"]["rows"]}
    assert best["full"]["learning"]["mean"] == pytest.approx(0.80)
    # hypervolume and its stated reference point
    volumes = {m: f"{v:.4g}" for m, v in result["frontier"]["hypervolume"].items()}
    assert {r[0]: r[1] for r in by_key["hypervolume"][1:]} == volumes
    ref = result["frontier"]["reference_point"]
    assert f"reference point: learning {ref['learning']:.4g}" in body
    # matched learning: a level the one-point method never reaches says so
    matched = by_key["matched"]
    odd = [r for r in matched[1:] if r[1] == XSS_METHOD]
    assert odd and all(r[2] == "not reached" for r in odd)
    reached = [r for r in tables["matched"]["rows"] if r["forgetting"] is not None]
    assert {f"{r['forgetting']:+.3f}" for r in reached} <= {r[2] for r in matched[1:]}
    # paired tests: 3 seeds, the weak-test note
    assert [r[:3] for r in by_key["paired"][1:]] == [
        [r["a"], r["b"], r["metric"]] for r in tables["paired"]["rows"]
    ]
    assert "only 3 common seeds (&lt; 5): the tests are weak" in body
    # every number cell is what `forgetlab compare` prints
    printed = compare_answers(runs)
    numbers = {
        part
        for table in shown
        for row in table[1:]
        for cell in row
        for part in cell.split(" ± ")
        if re.fullmatch(r"[+-]?\d+\.\d+(e[+-]\d+)?", part)
    }
    assert numbers and all(n in printed for n in numbers)


def test_edge_warning_is_shown_and_only_for_the_edge(grid):
    _, _, page = grid
    warnings = re.findall(r"<li class=warn>(.*?)</li>", section(page))
    assert len(warnings) == 1
    assert warnings[0].startswith("full: the best training.lr = 0.0001 is the highest")


def _decoded(img: dict) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    data = base64.b64decode(img["src"][len(prefix) :], validate=True)
    assert data[:8] == PNG
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert (str(pixels.shape[1]), str(pixels.shape[0])) == (img["width"], img["height"])
    return pixels


def test_the_two_figures_are_decoded_pngs_on_the_page(grid):
    _, out, page = grid
    images = {img["id"]: img for img in parsed(page).images}
    in_section = [img["id"] for img in parsed(section(page)).images]
    assert in_section == ["fig-rate-curves", "fig-frontier"]
    for fig_id in in_section:
        pixels = _decoded(images[fig_id])
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600
        assert pixels[..., :3].std() > 0.05  # drawn, not blank
        assert (figures_dir(out) / f"{fig_id.removeprefix('fig-')}.png").is_file()
    # one frontier figure: the overview's learning-vs-forgetting scatter is replaced
    assert "fig-learning-vs-forgetting" not in images
    assert "frontier is drawn under Answers" in page.split('id="overview"')[1]
    assert '<a href="#answers">Answers</a>' in page


def test_figures_follow_the_answers(tmp_path, result, grid):
    """The rate figure draws only methods that swept the rate; without any, it is left out."""
    from forgetlab.report.draw_answers import frontier_figure, rate_curves_figure

    assert rate_curves_figure(result) is not None
    flat = {**result, "best": {**result["best"], "rows": [
        {**r, "curve": None} for r in result["best"]["rows"]]}}  # fmt: skip
    assert rate_curves_figure(flat) is None
    assert frontier_figure(result)[:8] == PNG
    one = [write_run(tmp_path, f"solo-{k}", "lora", spread(0.6, 0.05 * k)) for k in (1, 2)]
    view = answers_view(one)  # same lr: no curve, the frontier alone
    assert [p.fig_id for p in view.plots] == ["fig-frontier"]


def test_one_seed_shows_the_mean_without_an_interval(tmp_path):
    runs = [
        write_run(tmp_path, "one-seed", "full", {1: (0.61, 0.04)}),
        write_run(tmp_path, "three-seeds", "lora", spread(0.6, 0.05)),
    ]
    view = answers_view(runs).html
    best = parsed(view).tables[0]
    col = best[0].index("learning (initial_acc) ± CI95")
    assert [r[col] for r in best[1:]] == ["0.610", f"0.600 ± {spread_ci(0.6):.3f}"]
    # one point a method: no matched learning, and the page says why, as compare does
    assert "<p class=note>Forgetting at matched learning: not shown, the runs do not span " \
        "enough learning levels (fewer than two methods have 2 or more points of distinct " \
        "learning).</p>" in view  # fmt: skip


def spread_ci(learning: float) -> float:
    """The 95% CI half-width of spread()'s three learning values."""
    from forgetlab.metrics import aggregate_seeds

    return aggregate_seeds([v[0] for v in spread(learning, 0.0).values()])["ci95"]


def test_single_run_has_no_answers_section(tmp_path):
    run = write_run(tmp_path, "solo", "lora", spread(0.6, 0.05))
    page = build_report([run], tmp_path / "r.html").read_text()
    assert 'id="answers"' not in page and "#answers" not in page
    assert 'id="fig-learning-vs-forgetting"' in page


def test_runs_of_different_tasks_get_one_line_and_nothing_else_changes(tmp_path, monkeypatch):
    runs = [
        write_run(tmp_path, "glue-a", "lora", spread(0.6, 0.05)),
        write_run(tmp_path, "other", "full", spread(0.7, 0.1), tasks=["cola", "qnli"]),
    ]
    monkeypatch.setattr(page_module, "now", lambda: "fixed time")
    page, plots = render_page(load_runs(runs))
    body = section(page)
    assert body.count("<p") == 1 and "No answers for these runs:" in body
    assert "their tasks differ" in body
    assert "fig-learning-vs-forgetting" in {p.fig_id for p in plots}
    # the same page without the answers: only the section and its link differ
    monkeypatch.setattr(page_module, "answers_view", lambda dirs: None)
    without, _ = render_page(load_runs(runs))
    start = page.index('<section id="answers">')
    end = page.index("</section>", start) + len("</section>\n")
    assert (page[:start] + page[end:]).replace('<a href="#answers">Answers</a>', "") == without


def test_user_strings_stay_escaped(grid):
    _, _, page = grid
    assert XSS_METHOD not in page
    escaped = html.escape(XSS_METHOD, quote=True)
    assert escaped in section(page)
    assert f"<td>{escaped} lr=0.001</td>" in section(page)  # its frontier point's label
    assert "<script" not in page.lower()


def test_a_sweep_directory_counts_as_its_trials(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("sweep: {}\n")
    for lr, value in FULL.items():
        write_run(sweep / "trials", f"full-{lr:g}", "full", spread(*value), lr=lr)
    page = api.report([sweep], tmp_path / "r.html").read_text()
    tables = parsed(section(page)).tables
    # the frontier table: one point per trial (trials come in name order)
    assert sorted(r[0] for r in tables[1][1:]) == sorted(f"full lr={lr:g}" for lr in FULL)


BROWSER = chromium_path()


def test_answers_page_in_chromium(grid):
    """No console error, no request beyond the file, every image decoded (both figures)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not BROWSER.is_file():
        pytest.skip(f"chromium not installed: {BROWSER} not found")
    _, out, _ = grid
    errors: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(BROWSER), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(out.as_uri(), wait_until="load")
            decoded = tab.eval_on_selector_all(
                "#answers img", "els => els.map(e => e.complete && e.naturalWidth > 0)"
            )
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert decoded == [True, True]
