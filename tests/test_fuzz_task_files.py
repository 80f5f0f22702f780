"""Fuzzed task files: CSV, TSV and JSONL with ragged rows, bad encodings (latin-1, UTF-16,
a byte-order mark, NUL bytes), empty fields, huge lines, mixed label types, missing columns,
empty files and header-only files either load as a valid task or are refused with forgetlab's
one-line error — never another exception. Loaded by the functions a run uses for a task of
`type: file` (classification; instruction and multiple_choice JSONL)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fuzz_support import fuzz_settings, outcome
from hypothesis import given
from hypothesis import strategies as st

from forgetlab.errors import DataError
from forgetlab.tasks.base import ClassificationExample, InstructionExample, MCExample
from forgetlab.tasks.files import load_file_task
from forgetlab.tasks.lm_files import load_lm_file_task

COLUMNS = ["text", "label", "sentence2", "prompt", "response", "question", "choices", "other"]
HUGE = "x" * 140_000  # over the csv module's field limit (131072 characters)

fields = st.one_of(
    st.text(max_size=16),
    st.sampled_from(
        ["", " ", '"', '""', '"a,b"', "a,b", "a\tb", "x\ny", "\r", "\x00", "\ufeff", "é", "\ud800"]
        + ["0", "1", "2", "-1", "1.0", "0.5", "pos", "neg", "nan", "1e308", "9" * 30, HUGE]
    ),
)
# Mostly the header a task asks for, sometimes another one (a missing column, duplicates).
headers = st.one_of(
    st.just(["text", "label"]),
    st.just(["text", "sentence2", "label"]),
    st.lists(st.sampled_from([*COLUMNS, "", " text "]), max_size=4),
)
encodings = st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])


@st.composite
def delimited(draw: st.DrawFn, delimiter: str) -> bytes:
    """A CSV/TSV file: written by the csv module (quoted as needed) or joined by hand (stray
    quotes, embedded line ends), rows mostly as wide as the header, some ragged."""
    header = draw(headers)
    width = len(header)
    rows = draw(
        st.lists(
            st.one_of(
                st.lists(fields, min_size=width, max_size=width),
                st.lists(fields, max_size=width + 2),
            ),
            max_size=6,
        )
    )
    table = [header, *rows] if draw(st.booleans()) or rows else draw(st.sampled_from([[], [[]]]))
    if draw(st.booleans()):
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(table)
        text = buffer.getvalue()
    else:
        end = draw(st.sampled_from(["\n", "\r\n"]))
        text = end.join(delimiter.join(row) for row in table)
    return _encoded(draw, text)


def _encoded(draw: st.DrawFn, text: str) -> bytes:
    data = text.encode(draw(encodings), errors="replace")
    if draw(st.integers(0, 4)) == 0:  # random bytes somewhere (invalid UTF-8 among them)
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**18, max_value=10**400),
        st.floats(),  # json.dumps writes NaN and Infinity, which json.loads reads back
        fields,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(), inner)),
    max_leaves=6,
)


@st.composite
def jsonl(draw: st.DrawFn, columns: list[str]) -> bytes:
    """A JSONL file: objects with the task's columns (sometimes missing or extra), plus stray
    lines: not JSON, not an object, deeply nested, a number of thousands of digits."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["object"] * 6 + ["junk", "scalar", "deep", "digits"]))
        if kind == "object":
            keys = draw(st.lists(st.sampled_from([*columns, *COLUMNS]), max_size=5))
            lines.append(json.dumps({k: draw(json_values) for k in [*columns, *keys]}))
            if draw(st.booleans()):
                del_key = draw(st.sampled_from(columns))
                lines[-1] = json.dumps({k: v for k, v in json.loads(lines[-1]).items()
                                        if k != del_key})  # fmt: skip
        elif kind == "junk":
            lines.append(draw(st.text(max_size=20)))
        elif kind == "scalar":
            lines.append(json.dumps(draw(json_values)))
        elif kind == "deep":
            lines.append("[" * 100_000 + "]" * 100_000)
        else:
            lines.append('{"label": ' + "7" * 5000 + "}")
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return _encoded(draw, end.join(lines))


VALID_CSV = b"text,label\ngood film,pos\nbad film,neg\n"


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _check_classification(task) -> None:
    if task is None:
        return
    assert task.train and task.eval and task.label_names
    for example in task.train + task.eval:
        assert isinstance(example, ClassificationExample)
        example.text.encode("utf-8")  # text a tokenizer takes (no lone surrogate)
        assert 0 <= example.label < task.num_labels


def _load_classification(tmp_path: Path, suffix: str, train: bytes, eval_: bytes, pair: bool):
    return load_file_task(
        "fuzz",
        _write(tmp_path, f"train{suffix}", train),
        _write(tmp_path, f"eval{suffix}", eval_),
        text_column="text",
        label_column="label",
        text_pair_column="sentence2" if pair else None,
    )


@st.composite
def classification_files(draw: st.DrawFn):
    """(suffix, train, eval, pair): a fuzzed train file beside a valid or a fuzzed eval file."""
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl"]))
    if suffix == ".jsonl":
        make = jsonl(["text", "label"])
        valid = b'{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n'
    else:
        make = delimited("," if suffix == ".csv" else "\t")
        valid = VALID_CSV if suffix == ".csv" else VALID_CSV.replace(b",", b"\t")
    train = draw(make)
    eval_ = draw(st.one_of(st.just(valid), make))
    return suffix, train, eval_, draw(st.booleans())


def _classification_property(tmp_path, files) -> None:
    suffix, train, eval_, pair = files
    _check_classification(
        outcome(lambda: _load_classification(tmp_path, suffix, train, eval_, pair))
    )


@fuzz_settings(120)
@given(files=classification_files())
def test_a_fuzzed_classification_file_loads_or_is_refused_in_one_line(tmp_path, files):
    _classification_property(tmp_path, files)


LM_COLUMNS = {"instruction": ["prompt", "response"], "multiple_choice": ["question", "choices"]}


def _lm_property(tmp_path, kind: str, train: bytes, eval_: bytes) -> None:
    columns = {"label_column": "label"} if kind == "multiple_choice" else {}
    task = outcome(
        lambda: load_lm_file_task(
            "fuzz",
            kind,
            _write(tmp_path, "train.jsonl", train) if kind == "instruction" else None,
            _write(tmp_path, "eval.jsonl", eval_),
            **columns,
        )
    )
    if task is None:
        return
    assert task.eval
    for example in task.train + task.eval:
        if kind == "instruction":
            assert isinstance(example, InstructionExample) and example.response.strip()
            (example.prompt + example.response).encode("utf-8")  # no lone surrogate
        else:
            assert isinstance(example, MCExample) and 0 <= example.label < len(example.choices)


lm_cases = st.sampled_from(sorted(LM_COLUMNS)).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        jsonl([*LM_COLUMNS[kind], "label"] if kind == "multiple_choice" else LM_COLUMNS[kind]),
        jsonl([*LM_COLUMNS[kind], "label"] if kind == "multiple_choice" else LM_COLUMNS[kind]),
    )
)


@fuzz_settings(60)
@given(case=lm_cases)
def test_a_fuzzed_language_model_file_loads_or_is_refused_in_one_line(tmp_path, case):
    _lm_property(tmp_path, *case)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"text,label\n" + HUGE.encode() + b",1\n", r"train\.csv:2: not valid CSV"),
        (b'{"text": "a", "label": ' + b"7" * 5000 + b"}\n", r"train\.jsonl:1: invalid JSON"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", r"train\.jsonl:1: invalid JSON"),
        (b"text,label\na,0\nb,1e12\n", r"train\.csv:3: class id 1000000000000 is too large"),
        (b'{"text": "a\\ud800", "label": 0}\n', r"train\.jsonl:1: a \\u escape encodes half"),
    ],
)
def test_what_the_parsers_cannot_read_names_the_file_and_line(tmp_path, data, message):
    """Found by fuzzing: the csv module's field limit, Python's limit on the digits of an
    integer and JSON nested too deep raised their own exceptions (tracebacks); an integer
    label of 1e12 made a list of a trillion class names (memory ran out)."""
    suffix = ".csv" if data.startswith(b"text") else ".jsonl"
    with pytest.raises(DataError, match=message):
        _load_classification(tmp_path, suffix, data, data, pair=False)


@pytest.mark.parametrize("label", ["--1", "²", "one"])
def test_a_choice_label_that_is_no_integer_is_one_line(tmp_path, label):
    """Found by fuzzing: "--1" and "²" passed `str.isdigit()` and then int() raised."""
    line = json.dumps({"question": "q", "choices": ["a", "b"], "label": label})
    path = _write(tmp_path, "mc.jsonl", line.encode())
    with pytest.raises(DataError, match=r"mc\.jsonl:1: label .* is not an integer index"):
        load_lm_file_task("fuzz", "multiple_choice", None, path)


@pytest.mark.slow
@fuzz_settings(1500)
@given(files=classification_files())
def test_many_fuzzed_classification_files(tmp_path, files):
    _classification_property(tmp_path, files)


@pytest.mark.slow
@fuzz_settings(800)
@given(case=lm_cases)
def test_many_fuzzed_language_model_files(tmp_path, case):
    _lm_property(tmp_path, *case)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "train",
    [
        b"text,label\ngood,1\nbad\n",  # ragged
        b"text,label\ncaf\xe9,1\n",  # latin-1
        b"text,label\n",  # header only
        b"",  # empty
    ],
)
def test_a_run_on_a_bad_task_file_leaves_no_results(tmp_path, capsys, train):
    """`forgetlab run` on a file it cannot read: one line on stderr, exit 2, and a run
    directory that holds nothing computed (no metrics.json, no seed folder, no checkpoint),
    so that the same --out starts again once the file is fixed."""
    from forgetlab.cli import main
    from forgetlab.rundir import RunDir

    config = {
        "tasks": [
            {
                "name": "own",
                "type": "file",
                "train": str(_write(tmp_path, "train.csv", train)),
                "eval": str(_write(tmp_path, "eval.csv", VALID_CSV)),
            }
        ],  # fmt: skip
        "training": {"max_steps": 1, "batch_size": 2},
        "output": {"store": str(tmp_path / "store.sqlite")},
    }
    path = _write(tmp_path, "run.yaml", json.dumps(config).encode())  # JSON is YAML
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("forgetlab: error: task own: ") and err.count("\n") == 1, err
    assert not RunDir(out).holds_results()
    assert not list(out.rglob("metrics.json")) and not list(out.rglob("state.json"))
    assert not (tmp_path / "store.sqlite").exists()
