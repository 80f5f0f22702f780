"""Task data layer: shipped loaders, user files, hub wiring, registry helpers."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from forgetlab.errors import DataError
from forgetlab.tasks import hub, registry, shipped
from forgetlab.tasks.base import ClassificationExample, TaskData
from forgetlab.tasks.files import load_file_task
from forgetlab.tasks.registry import load_task, subsample

# (task, train rows, eval rows, label names, pair task) as in shared/data/README.md.
SHIPPED = [
    ("rte", 2490, 277, ["entailment", "not_entailment"], True),
    ("mrpc", 4080, 1725, ["not_equivalent", "equivalent"], True),
    ("cola", 8551, 516, ["unacceptable", "acceptable"], False),
    ("sst2", 60614, 872, ["negative", "positive"], False),
    ("agnews", 10001, 7600, ["World", "Sports", "Business", "Sci/Tech"], False),
    ("trec", 9812, 500, ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"], False),
]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = registry.default_data_dir()
    if not (path / "glue").is_dir():
        pytest.skip(f"shipped data not found at {path}; set FORGETLAB_DATA to shared/data")
    return path


@pytest.fixture(scope="module")
def loaded(data_dir: Path) -> dict[str, TaskData]:
    # Each file is read once for the whole module: SST-2 alone is 60k lines.
    return {name: load_task(name, data_dir) for name, *_ in SHIPPED}


# --------------------------------------------------------------------------- shipped data


@pytest.mark.parametrize("name, n_train, n_eval, labels, pair", SHIPPED)
def test_shipped_sizes_labels_and_pairs(loaded, name, n_train, n_eval, labels, pair) -> None:
    task = loaded[name]
    assert (len(task.train), len(task.eval)) == (n_train, n_eval)
    assert task.label_names == labels
    assert task.kind == "classification"
    # every class occurs in both splits, and nothing outside the label range
    assert {ex.label for ex in task.train} == set(range(len(labels)))
    assert {ex.label for ex in task.eval} == set(range(len(labels)))
    assert task.is_pair is pair
    assert all((ex.text_pair is not None) is pair for ex in task.train + task.eval)
    assert f"({n_eval:,} rows" in task.eval_split
    assert task.source and Path(task.source).is_dir()


def test_shipped_texts_are_clean(loaded) -> None:
    for task in loaded.values():
        for ex in task.train + task.eval:
            assert ex.text and "\r" not in ex.text and "\t" not in ex.text, (task.name, ex)
            assert not ex.text.startswith("\ufeff")


def test_extra_metrics_and_eval_split(loaded) -> None:
    assert loaded["mrpc"].extra_metrics == ("f1",)
    assert loaded["cola"].extra_metrics == ("mcc",)
    assert loaded["rte"].extra_metrics == ()
    assert loaded["rte"].eval_split == "glue/RTE/dev.tsv (277 rows)"
    assert "dev.tsv" in loaded["sst2"].meta["note"]


def test_mrpc_bom_and_stray_quotes(loaded) -> None:
    mrpc = loaded["mrpc"]
    first = mrpc.train[0]
    assert first.text.startswith("Amrozi accused his brother")  # no BOM in front
    assert first.label == 1  # Quality 1 = equivalent
    # An unbalanced quote opens this sentence; csv quoting would have eaten lines here.
    stray = '"The foodservice pie business does not fit our long-term growth strategy.'
    assert any(ex.text_pair == stray for ex in mrpc.train)


def test_rte_and_agnews_csv_quoting_is_undone(loaded) -> None:
    rte_texts = {ex.text for ex in loaded["rte"].train}
    assert any(
        t.startswith('Valero Energy Corp., on Monday, said it found "extensive"') for t in rte_texts
    )
    for name in ("rte", "agnews"):
        assert not any('""' in ex.text for ex in loaded[name].train + loaded[name].eval)


def test_trec_drops_fine_label(loaded) -> None:
    first = loaded["trec"].eval[0]
    assert first.text == "How far is it from Denver to Aspen ?"
    assert loaded["trec"].label_names[first.label] == "NUM"


def test_missing_shipped_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        shipped.load_rte(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "glue" / "RTE" / "train.tsv") in msg
    assert "FORGETLAB_DATA" in msg and "data.dir" in msg


def test_malformed_shipped_line_is_located(tmp_path: Path) -> None:
    folder = tmp_path / "glue" / "CoLA"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("good sentence\t1\nbad sentence\tmaybe\n")
    (folder / "dev.tsv").write_text("x\t0\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: unknown label 'maybe'"):
        shipped.load_cola(tmp_path)


# --------------------------------------------------------------------------- registry


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(DataError) as err:
        load_task("imdb")
    msg = str(err.value)
    assert "'imdb'" in msg and "rte" in msg and "trec" in msg and "type: file" in msg


def test_unknown_source() -> None:
    with pytest.raises(DataError, match="source"):
        load_task("rte", source="ftp")


def test_registry_names_and_aliases() -> None:
    from forgetlab.tasks.lm_shipped import LM_TASKS

    assert set(registry.TASK_REGISTRY) == {name for name, *_ in SHIPPED} | set(LM_TASKS)
    assert registry.canonical_name(" SST-2 ") == "sst2"


def test_default_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORGETLAB_DATA", str(tmp_path))
    assert registry.default_data_dir() == tmp_path
    monkeypatch.delenv("FORGETLAB_DATA")
    assert registry.default_data_dir().parts[-2:] == ("shared", "data")


def test_subsample_deterministic_and_ordered() -> None:
    items = list(range(1000))
    a = subsample(items, 50, seed=3)
    assert a == subsample(items, 50, seed=3)
    assert a != subsample(items, 50, seed=4)
    assert len(a) == 50 and a == sorted(a) and len(set(a)) == 50
    assert subsample(items, None, seed=0) == items
    assert subsample(items, 5000, seed=0) == items
    assert subsample(items, 0, seed=0) == []


# --------------------------------------------------------------------------- user files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_string_labels(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", 'text,label\n"good, really",pos\nbad,neg\nfine,pos\n')
    eval_ = _write(tmp_path / "eval.csv", "text,label\nawful,neg\n")
    task = load_file_task("mine", train, eval_, "text", "label")
    assert task.label_names == ["neg", "pos"]  # sorted across train + eval
    assert task.train[0] == ClassificationExample("good, really", 1)
    assert task.eval[0].label == 0
    assert not task.is_pair
    assert task.eval_split == "eval.csv (1 rows)"


def test_tsv_int_labels_with_pair_and_stray_quote(tmp_path: Path) -> None:
    train = _write(tmp_path / "t.tsv", 'a\tb\ty\n"half quoted\tother\t2\nx\tz\t0\n')
    eval_ = _write(tmp_path / "e.tsv", "a\tb\ty\nq\tr\t1\n")
    task = load_file_task("pairs", train, eval_, "a", "y", text_pair_column="b")
    assert task.label_names == ["0", "1", "2"]
    assert task.train[0] == ClassificationExample('"half quoted', 2, "other")
    assert task.is_pair


def test_jsonl_with_label_names(tmp_path: Path) -> None:
    rows = [{"q": "hi", "lab": "b"}, {"q": "yo", "lab": 0}]
    train = _write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    eval_ = _write(tmp_path / "eval.jsonl", json.dumps({"q": "ok", "lab": "a"}))
    task = load_file_task("j", train, eval_, "q", "lab", label_names=["a", "b"])
    assert [ex.label for ex in task.train] == [1, 0]
    assert task.eval[0] == ClassificationExample("ok", 0)


def test_explicit_delimiter_for_unknown_extension(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.txt", "text|label\nx|1\ny|0\n")
    task = load_file_task("p", train, train, "text", "label", delimiter="|")
    assert [ex.label for ex in task.train] == [1, 0]


def test_file_missing_column_lists_columns(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", "sentence,label\nx,1\n")
    with pytest.raises(DataError) as err:
        load_file_task("m", train, train, "text", "label")
    msg = str(err.value)
    assert "'text'" in msg and "sentence, label" in msg and "train.csv" in msg


def test_file_missing_and_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv"):
        load_file_task("m", missing, missing, "text", "label")
    empty = _write(tmp_path / "empty.jsonl", "")
    with pytest.raises(DataError, match="empty"):
        load_file_task("m", empty, empty, "text", "label")
    header_only = _write(tmp_path / "h.csv", "text,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_file_task("m", header_only, header_only, "text", "label")


def test_file_unknown_label_and_bad_extension(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", "text,label\nx,maybe\n")
    with pytest.raises(DataError, match="maybe"):
        load_file_task("m", train, train, "text", "label", label_names=["no", "yes"])
    blank = _write(tmp_path / "blank.csv", "text,label\nx,\n")
    with pytest.raises(DataError, match=r"blank\.csv:2: empty label"):
        load_file_task("m", blank, blank, "text", "label")
    odd = _write(tmp_path / "data.xlsx", "x")
    with pytest.raises(DataError, match=r"\.csv, \.tsv or \.jsonl"):
        load_file_task("m", odd, odd, "text", "label")


# --------------------------------------------------------------------------- hub


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> None:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_failure_becomes_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError) as err:
        load_task("rte", source="hub")
    assert "nyu-mll/glue" in str(err.value) and "ConnectionError" in str(err.value)


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        hub.load_hub_task("trec")


class _FakeSplit:
    """Just enough of datasets.Dataset: column access, column_names, features."""

    def __init__(self, columns: dict[str, list], label_names: list[str]) -> None:
        self._columns = columns
        self.column_names = list(columns)
        self.features = {"coarse_label": types.SimpleNamespace(names=label_names)}

    def __getitem__(self, column: str) -> list:
        return self._columns[column]


def test_hub_labels_are_mapped_to_local_order(monkeypatch: pytest.MonkeyPatch) -> None:
    hub_order = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # CogComp/trec's ClassLabel
    split = _FakeSplit({"text": ["Who ?", "Why ?"], "coarse_label": [3, 2]}, hub_order)
    _fake_datasets(monkeypatch, lambda *a, **k: {"train": split, "test": split})
    task = hub.load_hub_task("trec")
    assert [task.label_names[ex.label] for ex in task.train] == ["HUM", "DESC"]
    assert task.label_names == shipped.TREC_LABELS
    assert task.source == "hub:CogComp/trec"


def test_hub_gsm8k_is_parsed_like_the_shipped_files(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"question": "2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}]
    calls = []

    def load_dataset(hub_id, config, **kwargs):
        calls.append((hub_id, config))
        return {"train": rows, "test": rows}

    _fake_datasets(monkeypatch, load_dataset)
    task = load_task("gsm8k", source="hub")
    assert calls == [("openai/gsm8k", "main")]
    assert task.kind == "instruction" and task.source == "hub:openai/gsm8k/main"
    (ex,) = task.eval
    assert ex.answer == "5" and "<<" not in ex.response and ex.prompt == "2 + 3?"
    assert load_task("gsm8k_gen", source="hub").kind == "generation"
