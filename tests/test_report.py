"""The HTML report, without a browser: content, self-containment, escaping, errors."""

from __future__ import annotations

import base64
import json
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_fixtures import ALL_ANALYSES, LM_PROBES, XSS_NAME, write_lm_run, write_run, write_runs

from forgetlab.errors import ForgetlabError
from forgetlab.report.page import build_report, figures_dir, report_figures
from forgetlab.report.summary import pareto_frontier, source_target_point

EXPECTED_IDS = {
    "fig-learning-vs-forgetting",
    "fig-rank90",
    *(
        f"fig-full-ft-{k}"
        for k in (
            "accuracy",
            "loss",
            "cka",
            "similarity",
            "spectrum",
            "hessian-stage1-head",
            "hessian-stage3-encoder",
        )
    ),
    *(f"fig-lora-r8-{k}" for k in ("accuracy", "loss", "cka", "spectrum")),
    "fig-frozen-accuracy",
    "fig-frozen-loss",
    "fig-script-alert-1-script-accuracy",
    "fig-script-alert-1-script-loss",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str, name: str) -> list[dict[str, str | None]]:
    parser = _Tags()
    parser.feed(page)
    return [attrs for tag, attrs in parser.tags if tag == name]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR", "the first PNG chunk is not IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    out = build_report(write_runs(root / "runs"), root / "out" / "report.html", title="Test & co")
    return out, out.read_text(encoding="utf-8")


def test_one_valid_inline_png_per_expected_figure(report):
    _, page = report
    images = _tags(page, "img")
    ids = [img["id"] for img in images]
    assert sorted(ids) == sorted(EXPECTED_IDS)  # each exactly once
    for img in images:
        assert img["alt"], f"{img['id']} has no alt text"
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        width, height = _png_size(base64.b64decode(img["src"][len(prefix) :], validate=True))
        assert width > 0 and height > 0
        assert (img["width"], img["height"]) == (str(width), str(height))


def test_page_is_self_contained(report):
    _, page = report
    lowered = page.lower()
    for needle in (
        "http://",
        "https://",
        'src="/',
        "src='/",
        "<script",
        "<link",
        "url(",
        "@import",
    ):
        assert needle not in lowered, needle
    srcs = [attrs.get("src") for _, attrs in _all_tags(page) if "src" in attrs]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    hrefs = [attrs["href"] for tag, attrs in _all_tags(page) if tag == "a"]
    assert hrefs and all(h.startswith("#") for h in hrefs)  # in-page links only


def _all_tags(page: str):
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_user_strings_are_escaped(report):
    _, page = report
    assert XSS_NAME not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Test &amp; co</title>" in page


def test_learning_is_shown_beside_forgetting(report):
    _, page = report
    assert "learned in 2/2 seeds" in page  # full FT learned every task in both seeds
    assert "learned in 0/1 seeds" in page  # the frozen run learned nothing
    assert "majority" in page and "avg_forgetting" in page
    assert "Forgetting, BWT and FWT are undefined for a single task." in page
    assert "not plotted" not in page  # that note is inside the scatter PNG, not the page
    for definition in ("ACC", "initial_acc", "forgetting_j", "BWT", "FWT", "binomial"):
        assert definition in page.split('id="definitions"')[1]


def test_absent_analyses_are_listed_not_fatal(report):
    _, page = report
    frozen = page.split('id="run-frozen"')[1].split("<section")[0]
    assert "Not present in analyses/: cka, similarity, spectrum, hessian." in frozen
    lora = page.split('id="run-lora-r8"')[1].split("<section")[0]
    assert "Not present in analyses/: similarity, hessian." in lora


def test_png_files_beside_the_page_match_the_inline_images(report):
    out, page = report
    folder = figures_dir(out)
    assert folder == out.parent / "report_figures"
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(files) == {i.removeprefix("fig-") + ".png" for i in EXPECTED_IDS}
    for img in _tags(page, "img"):
        inline = base64.b64decode(img["src"].split(",", 1)[1])
        assert files[img["id"].removeprefix("fig-") + ".png"] == inline
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], []),
        ([(0.1, 0.2)], [True]),
        # (0.2, 0.1) is dominated by (0.1, 0.2): less forgetting and more learning.
        ([(0.1, 0.2), (0.2, 0.1)], [True, False]),
        # a trade-off: both on the frontier
        ([(0.0, 0.1), (0.3, 0.4)], [True, True]),
        # equal forgetting, less learning: dominated; equal points both stay
        ([(0.1, 0.3), (0.1, 0.2), (0.1, 0.3)], [True, False, True]),
        # equal learning, more forgetting: dominated
        ([(0.0, 0.2), (0.1, 0.2)], [True, False]),
        (
            [(0.05, 0.10), (0.00, 0.00), (0.09, 0.24), (0.02, 0.19), (0.10, 0.20), (0.0, -0.04)],
            [False, True, True, True, False, False],
        ),
    ],
)
def test_pareto_frontier(points, expected):
    assert pareto_frontier(points) == expected


def test_report_figures_without_writing(tmp_path):
    run = write_run(tmp_path / "one", "solo", "lora", matrices="single")
    figs = report_figures([run])
    assert set(figs) == {"fig-learning-vs-forgetting", "fig-solo-accuracy", "fig-solo-loss"}
    assert all(png.startswith(PNG_SIGNATURE) for png in figs.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]


def test_malformed_analyses_become_notes(tmp_path):
    run = write_run(tmp_path / "one", "solo", "lora", ("cka",), matrices="single")
    cka = json.loads((run / "analyses" / "cka.json").read_text())
    cka["cka"] = [[0.5]]  # wrong shape for its layers
    (run / "analyses" / "cka.json").write_text(json.dumps(cka))
    (run / "analyses" / "other.json").write_text('{"analysis": "other"}')
    # a frozen backbone: the spectrum analysis ran but no weight changed
    nothing = {
        "analysis": "spectrum",
        "seed": 1,
        "energy": 0.9,
        "stages": [{"stage": 1, "task": "rte", "n_unchanged": 24, "matrices": []}],
    }
    (run / "analyses" / "spectrum.json").write_text(json.dumps(nothing))
    (run / "analyses" / "hessian-stage0-x.json").write_text("{not json")
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "analyses/cka.json could not be drawn (ValueError" in page
    assert "analyses/hessian-stage0-x.json skipped" in page and "not valid JSON" in page
    assert "analyses/other.json skipped" in page
    assert "analyses/spectrum.json: nothing to draw, no weight matrix changed by stage 1." in page
    assert "0 (no weight changed)" in page  # the comparison table still reports rank 0
    ids = {img["id"] for img in _tags(page, "img")}
    assert ids == {"fig-learning-vs-forgetting", "fig-rank90", "fig-solo-accuracy", "fig-solo-loss"}


def test_same_names_get_distinct_ids_and_dollars_are_literal(tmp_path):
    # "$\\frac{" would be an unterminated mathtext formula if matplotlib parsed it.
    name = "twin $\\frac{"
    a = write_run(tmp_path / "a", name, "lora", matrices="single")
    b = write_run(tmp_path / "b", name, "lora", matrices="single")
    ids = set(report_figures([a, b]))
    assert {"fig-twin-frac-lora-a-accuracy", "fig-twin-frac-lora-b-accuracy"} <= ids


def _assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()


def test_not_a_run_directory(tmp_path):
    good = write_run(tmp_path / "good", "solo", "lora", matrices="single")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "report.html"
    with pytest.raises(
        ForgetlabError, match="is not a run directory: metrics.json is missing"
    ) as e:
        build_report([good, empty], out)
    assert str(empty) in str(e.value)
    with pytest.raises(ForgetlabError, match="no such directory"):
        build_report([tmp_path / "nowhere"], out)
    with pytest.raises(ForgetlabError, match="at least one run"):
        build_report([], out)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("version"), "written by another version of forgetlab or is incomplete"),
        (lambda m: m.pop("accuracy_matrix"), "is incomplete: missing accuracy_matrix"),
        (lambda m: m["accuracy_matrix"].pop(), r"accuracy_matrix is \(1, 1\)"),
    ],
)
def test_stale_or_incomplete_metrics(tmp_path, change, message):
    run = write_run(tmp_path / "run", "solo", "lora", matrices="single")
    metrics = json.loads((run / "metrics.json").read_text())
    change(metrics)
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ForgetlabError, match=message):
        build_report([run], tmp_path / "out" / "report.html")
    _assert_nothing_written(tmp_path)


def test_rebuild_replaces_the_figures(tmp_path):
    run = write_run(tmp_path / "run", "solo", "lora", matrices="single")
    out = tmp_path / "report.html"
    build_report([run], out)
    (figures_dir(out) / "stale.png").write_bytes(PNG_SIGNATURE)
    build_report([run], out)
    assert "stale.png" not in {p.name for p in figures_dir(out).iterdir()}


def test_comparison_table_marks_the_frontier(report):
    _, page = report
    overview = page.split('id="overview"')[1].split("<section")[0]
    for name in ("full-ft", "lora-r8", "frozen"):  # a trade-off, and nothing dominates frozen
        assert f'<a href="#run-{name}">{name}</a> ★' in overview
    assert "&lt;/script&gt;</a> ★" not in overview  # single task: not on the plot at all


def test_runs_sharing_a_config_name_get_distinct_labels(tmp_path):
    """`forgetlab run quickstart.yaml method.name=lora` keeps the config's name: the page must
    still tell the runs apart (by method, then by run directory)."""
    from forgetlab.report.data import load_runs

    runs = load_runs(
        [
            write_run(tmp_path / "a", "quickstart", "full"),
            write_run(tmp_path / "b", "quickstart", "lora"),
            write_run(tmp_path / "c", "quickstart", "lora"),
        ]
    )
    assert [r.label for r in runs] == [
        "quickstart (full)",
        "quickstart (lora) (b)",
        "quickstart (lora) (c)",
    ]
    assert len({r.slug for r in runs}) == 3


# --------------------------------------------------------------------------------------------
# Language-model runs: probes, curves during training, diversity, source vs target
# --------------------------------------------------------------------------------------------

LM_IDS = {f"fig-lm-full-{k}" for k in ("accuracy", "curves", "probes", "loss", "diversity")}
LM_IDS |= {"fig-lm-lora-accuracy", "fig-lm-lora-probes", "fig-lm-lora-loss"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, str]:
    """An encoder run beside two decoder runs (full FT with curves and diversity.json, LoRA
    without either) in one report."""
    root = tmp_path_factory.mktemp("mixed")
    runs = [
        write_run(root / "enc", "enc-full", "full", ALL_ANALYSES),
        write_lm_run(root / "lm-full", "lm-full", "full"),
        write_lm_run(root / "lm-lora", "lm-lora", "lora", curves=False, diversity=False),
    ]
    out = build_report(runs, root / "report.html")
    return out, out.read_text(encoding="utf-8")


def _section(page: str, slug: str) -> str:
    return page.split(f'id="run-{slug}"')[1].split("<section")[0]


def test_lm_figures_are_valid_pngs(mixed):
    out, page = mixed
    images = {img["id"]: img for img in _tags(page, "img")}
    enc = {f"fig-enc-full-{k}" for k in ("accuracy", "loss", "cka", "similarity", "spectrum")}
    enc |= {"fig-enc-full-hessian-stage1-head", "fig-enc-full-hessian-stage3-encoder"}
    overview = {"fig-learning-vs-forgetting", "fig-rank90", "fig-source-target"}
    assert set(images) == overview | enc | LM_IDS
    for fig_id in overview | LM_IDS:
        png = base64.b64decode(images[fig_id]["src"].split(",", 1)[1], validate=True)
        width, height = _png_size(png)
        assert width > 100 and height > 100
        assert (figures_dir(out) / (fig_id.removeprefix("fig-") + ".png")).read_bytes() == png
    assert "fig-lm-lora-curves" not in images  # no curves (eval.every unset): no figure


def test_probe_table_lists_every_probe_and_flags_the_one_at_chance(mixed):
    _, page = mixed
    for slug in ("lm-full", "lm-lora"):
        section = _section(page, slug)
        probes = section.split("Source side: probes")[1].split("</table>")[0]
        for probe in LM_PROBES:
            assert f"<td>{probe}</td>" in probes
        # bb_strategyqa alone has a base at chance; agnews_text (neg_nll) has no chance level
        assert probes.count("(base at chance: its change is noise)") == 1
        assert "(no chance level)" in probes
        assert "after gsm8k" in probes and "after tinyshakespeare" in probes
        assert "Learning and forgetting during training" in section or slug == "lm-lora"
        assert "ACC: mean final score R[T][j]" in section  # not "accuracy": the scores are −NLL
        assert "none (vs base)" not in section  # that is drawn in the PNG
    assert "Learning and forgetting during training" not in _section(page, "lm-lora")


def test_mixed_runs_keep_the_encoder_section_as_it_was(mixed):
    _, page = mixed
    enc = _section(page, "enc-full")
    assert "Source side" not in enc and "during training" not in enc
    assert "Not present in analyses/" not in enc  # all four analyses, and no diversity asked
    assert "ACC: mean final accuracy R[T][j]" in enc
    assert "Not present in analyses/: cka, similarity, spectrum, hessian.<" in _section(
        page, "lm-full"
    )
    assert "hessian, diversity." in _section(page, "lm-lora")
    overview = page.split('id="overview"')[1].split("<section")[0]
    assert "<th>source loss</th>" in overview and "learning above majority (or base)" in overview
    assert "neg_nll" in page.split('id="definitions"')[1]


def test_report_without_lm_runs_has_no_lm_additions(report):
    _, page = report
    assert "source loss" not in page and "fig-source-target" not in page
    assert "diversity" not in page and "neg_nll" not in page


def _lm_summary(**extra) -> dict:
    """A hand-made summary: one accuracy task (majority 0.5) and one −NLL task (no floor)."""
    return {
        "majority_baseline": [0.5, None],
        # R[1][0] = 0.8 (floor 0.5: +0.3); R[2][1] = −1.5 (floor = base −2.0: +0.5)
        "accuracy_matrix": [[0.5, -2.0], [0.8, -1.9], [0.7, -1.5]],
        **extra,
    }


PROBES = {
    "probes": ["above", "at-chance", "nll", "gen-zero"],
    "probe_metrics": ["accuracy", "accuracy", "neg_nll", "exact_match"],
    "probe_base_above_chance": [True, False, None, None],
    # changes: −0.1, +0.05, −0.2, +0.1; the base scores 0 on gen-zero: nothing to lose
    "probe_matrix": [[0.7, 0.5, -3.0, 0.0], [0.65, 0.52, -3.1, 0.05], [0.6, 0.55, -3.2, 0.1]],
}


def test_source_target_point_by_hand():
    # gain = mean(0.8 − 0.5, −1.5 − (−2.0)) = 0.4; no probes: no source loss
    gain, loss = source_target_point(_lm_summary())
    assert gain == pytest.approx(0.4) and loss is None
    # source loss = −mean(−0.1 [above chance], −0.2 [neg_nll]) = 0.15; at-chance and a
    # generation probe the base model scores 0 on are left out
    gain, loss = source_target_point(_lm_summary(**PROBES))
    assert gain == pytest.approx(0.4) and loss == pytest.approx(0.15)
    # the run's own probe_source wins, and probe_change is used as written
    given = {"probe_source": [False, True, False, True], "probe_change": [0, 0.04, 0, -0.3]}
    assert source_target_point(_lm_summary(**PROBES, **given))[1] == pytest.approx(0.13)
    # every probe at chance: nothing the base model could lose
    none = {**PROBES, "probe_source": [False] * 4}
    assert source_target_point(_lm_summary(**none))[1] is None


def test_encoder_summary_point():
    # two accuracy tasks, majority 0.5 and 0.6: gain = mean(0.9 − 0.5, 0.7 − 0.6) = 0.25
    summary = {
        "majority_baseline": [0.5, 0.6],
        "accuracy_matrix": [[0.5, 0.6], [0.9, 0.6], [0.8, 0.7]],
    }
    assert source_target_point(summary) == (pytest.approx(0.25), None)


def test_malformed_lm_keys_become_notes(tmp_path):
    run = write_lm_run(tmp_path / "lm", "lm", "full", diversity=False)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["probe_matrix"] = [[0.5]]  # wrong shape for three probes
    metrics["per_seed"]["1"]["curves"][0].pop("scores")
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "analyses").mkdir()
    (run / "analyses" / "diversity.json").write_text('{"analysis": "diversity", "rows": []}')
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "The probes (probe_matrix) could not be shown (ValueError" in page
    assert "The curves during training (curves) could not be shown (KeyError" in page
    assert "analyses/diversity.json: nothing to draw, no rows." in page
    ids = {img["id"] for img in _tags(page, "img")}
    # probe_change and probe_source are intact: the run still has its source loss
    assert ids == {
        "fig-learning-vs-forgetting",
        "fig-source-target",
        "fig-lm-accuracy",
        "fig-lm-loss",
    }
