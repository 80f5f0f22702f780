"""Analyses over finished tiny runs, through the API and the CLI: CKA drift, update spectrum,
task similarity, the Hessian; caching; and bad run directories that must stay untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import needs_data, tiny_raw

import forgetlab
from forgetlab.cli import main
from forgetlab.errors import ForgetlabError
from forgetlab.store import ResultsStore

pytestmark = needs_data


def _run(root: Path, method: str, lr: float | None = None, **method_keys) -> Path:
    raw = tiny_raw(root / method, method, **({"lr": lr} if lr else {}))
    raw["method"].update(method_keys)
    forgetlab.run(forgetlab.load_config(raw=raw))
    return root / method


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analyses")
    return {
        "full": _run(root, "full"),
        "lora": _run(root, "lora"),
        "freeze": _run(root, "freeze", lr=1e-3, num_trainable_layers=2),
    }


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_frozen_layers_keep_cka_one_and_trained_layers_drift(runs):
    result = forgetlab.analyze(runs["freeze"], ["cka"])["cka"]
    assert result["layers"] == ["embeddings"] + [f"layer {i}" for i in range(1, 7)]
    assert len(result["cka"]) == 2  # one row per stage
    for row, debiased in zip(result["cka"], result["cka_debiased"]):
        # MiniLM has 6 blocks; the lower 4 are frozen, so embeddings .. layer 4 are unchanged
        assert row[:5] == pytest.approx([1.0] * 5, abs=1e-6)
        assert debiased[:5] == pytest.approx([1.0] * 5, abs=1e-6)
        assert all(v < 1 - 1e-4 for v in row[5:])


def test_full_fine_tuning_drifts_most_in_the_last_layer(runs):
    result = forgetlab.analyze(runs["full"], ["cka"])["cka"]
    final = result["cka"][-1]
    assert 1 - final[-1] > 1 - final[0]  # last block moved more than the embeddings
    assert all(0 <= v <= 1 + 1e-9 for row in result["cka"] for v in row)


def test_lora_update_rank_is_at_most_r_and_full_is_far_higher(runs):
    lora = forgetlab.analyze(runs["lora"], ["spectrum"])["spectrum"]
    full = forgetlab.analyze(runs["full"], ["spectrum"])["spectrum"]
    final = lora["stages"][-1]
    names = {m["name"].rsplit(".", 1)[-1] for m in final["matrices"]}
    assert names == {"query", "value"}  # only the targeted layers moved
    assert len(final["matrices"]) == 12  # 6 blocks × (query, value)
    assert all(m["numerical_rank"] <= 8 for m in final["matrices"])  # r = 8
    full_final = full["stages"][-1]
    assert len(full_final["matrices"]) > 30  # every linear layer moved
    assert full_final["median_rank90"] > 4 * final["median_rank90"]


def test_similarity_matrices_are_symmetric_with_unit_diagonal(runs):
    r = forgetlab.analyze(runs["lora"], ["similarity"])["similarity"]
    assert r["tasks"] == ["rte", "sst2"]
    for key in ("representation", "gradient_cosine"):
        M = r[key]
        assert M[0][0] == pytest.approx(1.0) and M[1][1] == pytest.approx(1.0)
        assert M[0][1] == pytest.approx(M[1][0], abs=1e-6)
        assert -1 <= M[0][1] < 1 - 1e-6
    assert len(r["interference"]) == 2 and r["forgetting"][1] is None


def test_results_are_cached_in_the_run_and_the_store(runs):
    run = runs["lora"]
    forgetlab.analyze(run, ["cka"])
    path = run / "analyses" / "cka.json"
    before = path.stat().st_mtime_ns
    forgetlab.analyze(run, ["cka"])
    assert path.stat().st_mtime_ns == before  # cached: not recomputed
    forgetlab.analyze(run, ["cka"], force=True)
    assert path.stat().st_mtime_ns > before
    stored = ResultsStore(run.parent / "store.sqlite").analyses(run)
    assert "cka" in {a["name"] for a in stored}
    other = forgetlab.analyze(run, ["cka"], options={"cka": {"examples_per_task": 8}})["cka"]
    assert other["n_examples"] == 16  # other options: computed again, not the cached result


def test_hessian_of_a_run_stage_and_of_a_config_at_init(runs, tmp_path):
    r = forgetlab.hessian(runs["lora"], stage=2, examples=8, batch_size=8, iters=6)
    assert r["stage"] == 2 and r["task"] == "sst2"
    (res,) = r["results"]
    assert res["name"] == "trainable" and res["lambda_max"] > 0
    assert (runs["lora"] / "analyses" / "hessian-stage2-trainable.json").is_file()
    # a config: the Hessian at init, before any training; nothing is written
    raw = tiny_raw(tmp_path / "never", "lora")
    at_init = forgetlab.hessian(
        forgetlab.load_config(raw=raw), group="layers", examples=8, batch_size=8, iters=4
    )
    assert {x["name"] for x in at_init["results"]} >= {"layer 0", "layer 5"}
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "metrics.json").unlink(), "incomplete run"),
        (
            lambda d: (d / "metrics.json").write_text(
                json.dumps({**json.loads((d / "metrics.json").read_text()), "version": "9.0.0"})
            ),
            "written by forgetlab 9.0.0",
        ),
        (
            lambda d: shutil.rmtree(next((d / "seed-1" / "checkpoints").glob("stage-1-*"))),
            "no checkpoint for stage 1",
        ),
    ],
    ids=["incomplete", "other-version", "missing-checkpoint"],
)
def test_bad_run_directories_fail_clearly_and_stay_untouched(runs, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run, ignore=shutil.ignore_patterns("analyses"))
    damage(run)
    before = _snapshot(run)
    with pytest.raises(ForgetlabError, match=message):
        forgetlab.analyze(run, ["spectrum", "cka"] if "checkpoint" in message else None)
    assert _snapshot(run) == before
    assert main(["analyze", str(run), "--cka"]) == 2
    assert _snapshot(run) == before


def test_cli_analyze_and_hessian_print_their_tables(runs, capsys):
    assert main(["analyze", str(runs["lora"]), "--spectrum", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Update rank" in out and "median rank90" in out
    code = main(["hessian", str(runs["lora"]), "--stage", "1", "--examples", "8",
                 "--iters", "4", "--quiet", "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["lambda_max"] > 0
    assert main(["analyze", str(runs["lora"]), "--energy", "1.5", "--spectrum"]) == 2
    assert "energy=1.5" in capsys.readouterr().err
