"""The answers' tables in every format hold the same numbers; what `compare` prints; the
answers of two real tiny runs (the golden config)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from forgetlab.answers import answers, compare_answers, format_answers, format_shown, save_answers
from forgetlab.errors import ForgetlabError
from tests.answers_fixtures import same_seeds, write_run
from tests.conftest import needs_data
from tests.test_answers_matched import FULL, LORA, spread


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("answers")
    out = [write_run(root, f"full-{lr:g}", "full", spread(*v), lr=lr) for lr, v in FULL.items()]
    return out + [
        write_run(root, f"lora-{lr:g}", "lora", spread(*v), lr=lr) for lr, v in LORA.items()
    ]


@pytest.fixture(scope="module")
def result(runs) -> dict:
    return answers(runs, resamples=200, pairs=[("lora-0.001", "full-0.0001")])


def csv_blocks(text: str) -> dict[str, list[dict]]:
    blocks = {}
    for block in text.split("\n\n"):
        head, body = block.split("\n", 1)
        blocks[head[2:].split(":")[0]] = list(csv.DictReader(io.StringIO(body)))
    return blocks


def test_every_format_has_the_same_tables_and_numbers(result):
    tables = json.loads(format_answers(result, "json"))
    assert list(tables) == [
        "best",
        "frontier",
        "hypervolume",
        "matched",
        "matched_differences",
        "paired",
        "pairs",
    ]
    best = tables["best"]["rows"]
    assert [r["method"] for r in best] == ["full", "lora"]
    assert best[0]["learning (initial_acc)"] == result["best"]["rows"][0]["learning"]["mean"]
    assert best[1]["gap to lora"] == 0.0
    # csv: the same columns and every digit of the same numbers
    blocks = csv_blocks(format_answers(result, "csv"))
    assert list(blocks) == list(tables)
    for key, table in tables.items():
        assert [list(r) for r in blocks[key]] == [table["columns"]] * len(table["rows"])
        for got, want in zip(blocks[key], table["rows"]):
            for column, value in want.items():
                if isinstance(value, float):
                    assert float(got[column]) == value
                elif value is None:
                    assert got[column] == ""
    # text and markdown: one line per row, numbers rounded for reading
    text = format_answers(result, "table")
    markdown = format_answers(result, "markdown")
    for table in tables.values():
        assert table["title"] in text and f"### {table['title']}" in markdown
    assert "not reached" in text and "not reached" in markdown
    assert "lora forgets +0.080 (95% CI" in text  # the sentence at learning 0.650 …
    assert "full lr=0.0001  0.800     +0.200" in text
    assert "| full lr=0.0001 | 0.800 | +0.200 | True | True |" in markdown


def test_sections_and_formats_are_checked(result):
    assert list(json.loads(format_answers(result, "json", ["hypervolume"]))) == ["hypervolume"]
    with pytest.raises(ForgetlabError, match="format must be one of"):
        format_answers(result, "html")
    with pytest.raises(ForgetlabError, match="unknown section"):
        format_answers(result, "table", ["plots"])


def test_answers_json_is_plain_json(result, tmp_path):
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    path = save_answers(result, tmp_path)
    assert path == tmp_path / "answers.json"
    assert json.loads(path.read_text()) == result


def test_compare_prints_matched_learning_only_when_the_runs_span_it(runs, tmp_path):
    printed = compare_answers(runs, resamples=50)
    assert "Forgetting at matched learning" in printed
    assert "Best setting per method" in printed
    few = [
        write_run(tmp_path, "x", "full", same_seeds(0.8, 0.2), lr=1e-4),
        write_run(tmp_path, "y", "lora", same_seeds(0.6, 0.1), lr=1e-3),
    ]
    printed = compare_answers(few, "markdown", resamples=50)
    assert "### Best setting per method" in printed
    assert "### Forgetting at matched learning" not in printed  # left out, and said why:
    assert printed.endswith(
        "Forgetting at matched learning: not shown, the runs do not span enough learning "
        "levels (fewer than two methods have 2 or more points of distinct learning)"
    )
    assert format_shown(answers(few, resamples=50)) == compare_answers(few, resamples=50)
    assert "not shown" not in compare_answers(few, "csv", resamples=50)  # data stays data
    assert compare_answers(few[:1]) == ""
    other = write_run(tmp_path, "z", "lora", same_seeds(0.6, 0.1), tasks=["mrpc", "sst2"])
    assert compare_answers([few[0], other]).startswith("answers: none for these runs: ")


def test_a_run_without_the_metric_is_left_out(tmp_path):
    runs = [
        write_run(
            tmp_path, "a", "lora", same_seeds(0.6, 0.1), source_loss={1: 0.1, 2: 0.1, 3: 0.1}
        ),
        write_run(tmp_path, "b", "lora", same_seeds(0.7, 0.1), lr=3e-3),
    ]
    got = answers(runs, forgetting="source_loss", resamples=10)
    assert [p["name"] for p in got["points"]] == ["a"]
    assert got["excluded"] == [
        {"run": str(runs[1]), "why": "source_loss undefined for some seed (one task? no probes?)"}
    ]
    assert "left out: " in format_answers(got)
    with pytest.raises(ForgetlabError, match="no run has initial_acc and source_loss"):
        answers(runs[1:], forgetting="source_loss")


@needs_data
def test_answers_of_the_two_golden_runs(tmp_path):
    """The golden config's two real tiny runs (full FT; LoRA with the Laplace penalty)."""
    from forgetlab.cli import main
    from forgetlab.report.text import target_gain
    from forgetlab.rundir import RunDir

    golden = Path(__file__).parent / "golden" / "golden.yaml"
    assert main(["run", str(golden), "--out", str(tmp_path), "--quiet"]) == 0
    runs = [tmp_path / "full", tmp_path / "lora-laplace"]
    summaries = [RunDir(r).summary() for r in runs]
    got = answers(runs, learning="target_gain", forgetting="source_loss", resamples=20)
    assert [p["method"] for p in got["points"]] == ["full", "lora+laplace(λ=100)"]
    assert got["swept"] == ["training.lr"]
    for point, s in zip(got["points"], summaries):
        assert point["settings"] == {"training.lr": s["lr"]}
        # one seed: the run's target gain and source loss are the seed's
        assert point["learning"]["mean"] == pytest.approx(target_gain(s))
        assert point["forgetting"]["mean"] == pytest.approx(s["aggregate"]["source_loss"]["mean"])
    assert got["best"]["reference"] is None  # no plain LoRA run among them
    assert all("1 common seed(s): no test" in r["notes"] for r in got["paired"])
    assert got["matched"]["spans_enough"] is False
    printed = compare_answers(runs)
    assert "Best setting per method" in printed
    assert "Forgetting at matched learning\n" not in printed  # the table's title
    assert printed.endswith("not shown, the runs do not span enough learning levels (fewer than "
                            "two methods have 2 or more points of distinct learning)")  # fmt: skip


def test_one_task_runs_get_the_best_setting_table_and_learning_tests_only(tmp_path):
    """A single-task grid ("Learning Rate Matters" on SST-2) has no forgetting: the answers
    are each method at its own tuned rate and the paired learning tests, not an error."""
    import json

    from forgetlab.answers import answers, format_answers
    from tests.answers_fixtures import write_run

    runs = []
    for method, lrs in (("lora", {1e-3: 0.60, 1e-2: 0.70}), ("full", {1e-5: 0.65, 1e-4: 0.62})):
        for lr, learn in lrs.items():
            run = write_run(
                tmp_path, f"{method}-{lr}", method, {1: (learn, 0.0), 2: (learn, 0.0)}, lr
            )
            summary = json.loads((run / "metrics.json").read_text())
            for seed in summary["per_seed"].values():
                seed["avg_forgetting"] = None  # what a one-task run records
            (run / "metrics.json").write_text(json.dumps(summary))
            runs.append(run)
    result = answers(runs)
    best = {row["method"]: row for row in result["best"]["rows"]}
    assert (
        best["lora"]["settings"]["training.lr"] == 1e-2
        and best["full"]["settings"]["training.lr"] == 1e-5
    )
    assert best["lora"]["edge"] and result["frontier"]["points"] == []
    assert [t["metric"] for t in result["paired"]] == ["learning"]
    text = format_answers(result)
    assert "Best setting per method" in text and "frontier" not in text.lower()
