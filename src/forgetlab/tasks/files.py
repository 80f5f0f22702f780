"""A classification task from the user's own CSV, TSV or JSONL files.

The format comes from the extension (.csv, .tsv/.tab, .jsonl/.ndjson) or from `format`.
CSV/TSV need a header row. Labels are either strings (mapped to indices through
`label_names`, or through their sorted unique values across train+eval so that both splits
agree) or integer class ids — not both: a column of names with a stray number (`pos, neg, 1`)
or of ids with a stray other value (`0, 1, 0.5`) is refused, naming the odd values and their
rows, rather than read as an extra class. The training split must hold two classes or more.
Only text parsing (csv, json) is used: never pickle.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from forgetlab.errors import DataError
from forgetlab.tasks.base import ClassificationExample, TaskData

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# Integer labels are class ids 0..max: a head of this many classes is already far beyond any
# text-classification task, and a stray 1e12 must not allocate a trillion class names.
MAX_CLASS_ID = 100_000
# (where, text, text_pair, raw label) for one row, before labels are mapped to indices.
RawRow = tuple[str, str, str | None, object]


def load_file_task(
    name: str,
    train_path: Path,
    eval_path: Path,
    text_column: str,
    label_column: str,
    text_pair_column: str | None = None,
    label_names: list[str] | None = None,
    delimiter: str | None = None,
    format: str | None = None,  # the config key users write; shadows the builtin only here
) -> TaskData:
    """Load a user task; see the module docstring for the accepted files and labels."""
    columns = (text_column, text_pair_column, label_column)
    train_raw = _read_split(name, Path(train_path), columns, delimiter, format)
    eval_raw = _read_split(name, Path(eval_path), columns, delimiter, format)
    names = _label_names(name, train_raw + eval_raw, label_names, label_column)
    train = _to_examples(train_raw, names)
    eval_ = _to_examples(eval_raw, names)
    seen = sorted({names[e.label] for e in train})
    if len(seen) < 2:  # every prediction would be right: accuracy 1.0, nothing measured
        raise DataError(
            f"task {name}: label column {label_column!r} of {train_path} holds a single class "
            f"({', '.join(map(repr, seen))}): a classification task needs two or more"
        )
    return TaskData(
        name=name,
        kind="classification",
        label_names=names,
        train=train,
        eval=eval_,
        eval_split=f"{Path(eval_path).name} ({len(eval_):,} rows)",
        source=str(train_path),
        meta={"train_file": str(train_path), "eval_file": str(eval_path)},
    )


# --------------------------------------------------------------------------- reading


def detect_format(path: Path, fmt: str | None = None) -> str:
    """'csv', 'tsv' or 'jsonl': `fmt` when given, else from the file extension."""
    if fmt is not None:
        norm = fmt.lower().lstrip(".")
        if norm not in FORMATS:
            raise DataError(f"unknown data format {fmt!r} for {path}; use one of {FORMATS}")
        return norm
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"cannot tell the format of {path} from its extension; name it .csv, .tsv or "
            ".jsonl, or set the task's format"
        )
    return found


def _read_split(
    task: str,
    path: Path,
    columns: tuple[str, str | None, str],
    delimiter: str | None,
    fmt: str | None,
) -> list[RawRow]:
    if not path.is_file():
        raise DataError(f"task {task}: data file not found: {path}")
    if fmt is None and delimiter and path.suffix.lower() not in _EXTENSIONS:
        fmt = "csv"  # an explicit delimiter says "delimited text" whatever the extension
    fmt = detect_format(path, fmt)
    records = (
        _jsonl_records(task, path) if fmt == "jsonl" else _csv_records(task, path, fmt, delimiter)
    )
    rows = _pick_columns(task, path, records, columns)
    if not rows:
        raise DataError(f"task {task}: {path} has no data rows")
    return rows


def _read_text(task: str, path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"task {task}: {path} is not UTF-8 text ({exc.reason})") from exc


def _csv_records(
    task: str, path: Path, fmt: str, delimiter: str | None
) -> Iterable[tuple[int, dict]]:
    text = _read_text(task, path)
    if not text.strip():
        raise DataError(f"task {task}: {path} is empty")
    delim = delimiter or ("\t" if fmt == "tsv" else ",")
    # Tab-separated NLP files (GLUE and co.) carry stray unbalanced quotes; csv quoting would
    # swallow line ends up to the next quote, so quoting is off for tabs. CSV keeps standard
    # quoting because commas inside text must be quoted there.
    quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
    # newline="": the csv module handles \r\n itself and quoted fields may span lines.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim, quoting=quoting)
    rows = _csv_rows(task, path, fmt, reader)
    header = next(rows, None)
    if not header:
        raise DataError(f"task {task}: {path} has no header row")
    header = [h.strip() for h in header]
    for fields in rows:
        if not any(f.strip() for f in fields):
            continue  # blank line
        where = f"{path}:{reader.line_num}"
        if len(fields) != len(header):
            raise DataError(
                f"task {task}: {where}: {len(fields)} fields but the header has {len(header)}"
            )
        yield reader.line_num, dict(zip(header, fields))


def _csv_rows(task: str, path: Path, fmt: str, reader) -> Iterator[list[str]]:
    """The reader's rows; what the csv module cannot parse (a field over its size limit, ...)
    is a DataError naming the file and line, not a traceback."""
    try:
        yield from reader
    except csv.Error as exc:
        where = f"{path}:{reader.line_num}"
        raise DataError(f"task {task}: {where}: not valid {fmt.upper()} ({exc})") from exc


def _jsonl_records(task: str, path: Path) -> Iterable[tuple[int, dict]]:
    text = _read_text(task, path)
    if not text.strip():
        raise DataError(f"task {task}: {path} is empty")
    yield from jsonl_objects(task, path, text.split("\n"))


def jsonl_objects(task: str, path: Path, lines: Iterable[str]) -> Iterable[tuple[int, dict]]:
    """(line number, object) for every non-blank line; bad JSON names its line."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, and numbers of over 4300 digits;
            # RecursionError: arrays or objects nested thousands deep.
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(":")[0]
            raise DataError(f"task {task}: {path}:{lineno}: invalid JSON ({why})") from exc
        if not isinstance(record, dict):
            raise DataError(f"task {task}: {path}:{lineno}: expected a JSON object per line")
        if "\\u" in line and not _is_text(record):
            raise DataError(
                f"task {task}: {path}:{lineno}: a \\u escape encodes half a surrogate pair "
                "(not text; the tokenizer would refuse it)"
            )
        yield lineno, record


def _is_text(record: dict) -> bool:
    """Every string of `record` is text (JSON escapes such as \\ud800 are not)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pick_columns(
    task: str,
    path: Path,
    records: Iterable[tuple[int, dict]],
    columns: tuple[str, str | None, str],
) -> list[RawRow]:
    text_col, pair_col, label_col = columns
    rows: list[RawRow] = []
    for lineno, record in records:
        where = f"task {task}: {path}:{lineno}"
        for col in (text_col, pair_col, label_col):
            if col is not None and col not in record:
                raise DataError(
                    f"task {task}: {path} has no column {col!r}; "
                    f"columns are {', '.join(map(str, record))}"
                )
        text = _text(record[text_col], where, text_col)
        pair = _text(record[pair_col], where, pair_col) if pair_col else None
        label = record[label_col]
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{where}: empty label in column {label_col!r}")
        rows.append((where, text, pair, label))
    return rows


def _text(value: object, where: str, column: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a number as text is odd but harmless
    raise DataError(f"{where}: column {column!r} must be text, got {value!r}")


# --------------------------------------------------------------------------- labels


def _as_int(value: object) -> int | None:
    """The integer class id a label value stands for, or None for a name."""
    if isinstance(value, bool):
        return None  # JSON true/false are names ("False", "True"), not ids
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        # "1" and "1.0" (pandas writes integer columns with NaNs as floats) are both id 1.
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def _label_names(
    task: str, rows: list[RawRow], given: list[str] | None, column: str = "label"
) -> list[str]:
    if given is not None:
        if len(set(given)) != len(given) or not given:
            raise DataError(f"task {task}: label_names must be distinct and non-empty: {given}")
        return [str(n) for n in given]
    raw = [label for *_, label in rows]
    ints = [_as_int(v) for v in raw]
    n_ids = sum(i is not None for i in ints)
    if 0 < n_ids < len(raw):
        # ids and names in one column: the rarer sort is the odd one (a typo, a stray row)
        odd_are_ids = n_ids <= len(raw) - n_ids
        odd: dict[str, str] = {}
        for (where, *_, label), i in zip(rows, ints):
            if (i is not None) == odd_are_ids:
                odd.setdefault(_label_str(label), where.removeprefix(f"task {task}: "))
        shown = ", ".join(f"{v!r} at {w}" for v, w in list(odd.items())[:3])
        kind = "class ids among names" if odd_are_ids else "values that are not class ids"
        raise DataError(
            f"task {task}: label column {column!r} mixes {kind}: {shown}"
            + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
            + "; fix those rows, or give label_names"
        )
    if n_ids == len(raw):
        # Integer ids are used as they are, so class 0..max all exist even if one is unseen.
        top = max(ints)
        if top >= MAX_CLASS_ID:  # 1e12 would be a trillion classes (memory runs out)
            where = next(where for (where, *_), i in zip(rows, ints) if i == top)
            raise DataError(
                f"{where}: class id {top} is too large (ids 0..{MAX_CLASS_ID - 1}); write "
                "labels as names, or give label_names"
            )
        return [str(i) for i in range(top + 1)]
    return sorted({_label_str(v) for v in raw})


def _label_str(value: object) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _to_examples(rows: list[RawRow], names: list[str]) -> list[ClassificationExample]:
    return [
        ClassificationExample(text, _label_index(label, names, where), pair)
        for where, text, pair, label in rows
    ]


def _label_index(value: object, names: list[str], where: str) -> int:
    name = _label_str(value)
    if name in names:
        return names.index(name)
    idx = _as_int(value)
    if idx is not None and 0 <= idx < len(names):
        return idx
    raise DataError(
        f"{where}: label {value!r} is neither one of {names} nor an index 0..{len(names) - 1}"
    )
