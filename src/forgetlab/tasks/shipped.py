"""Loaders for the data files shipped in `shared/data` (see its README).

Each `load_<name>(data_dir)` returns the FULL train and eval splits; subsampling happens
later (`registry.subsample`) so that every method sees the same pool.

The files are read line by line and split on tabs instead of going through `csv`: MRPC
holds stray, unbalanced quote characters that csv's quoting would treat as field
delimiters, silently merging lines (MRPC train would come out as 3,967 rows instead of
4,080). Plain splitting keeps every such quote as part of the text.

RTE and AG News, on the other hand, were written with CSV-style quoting (by pandas): a
field containing a quote is wrapped in quotes with inner quotes doubled,
`"He said ""yes"" today."`. Those files are read with `quoted=True`, which undoes that per
field (never across lines, so a malformed field cannot swallow the rest of the file).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from forgetlab.errors import DataError
from forgetlab.tasks.base import ClassificationExample, TaskData

DATA_HINT = "set FORGETLAB_DATA or data.dir to the folder that holds glue/, agnews/ and trec/"

RTE_LABELS = ["entailment", "not_entailment"]
MRPC_LABELS = ["not_equivalent", "equivalent"]
COLA_LABELS = ["unacceptable", "acceptable"]
SST2_LABELS = ["negative", "positive"]
AGNEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# Sorted, and fixed here rather than derived from the file, so that indices never shift.
TREC_LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]

# (line number, tab-separated fields) for one data line.
Row = tuple[int, list[str]]


# --------------------------------------------------------------------------- reading


def read_text(path: Path, task: str, encoding: str = "utf-8") -> str:
    """The whole file, unchanged (no line-end handling: chunk offsets must match the file)."""
    if not path.is_file():
        raise DataError(f"task {task}: data file not found: {path} ({DATA_HINT})")
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"task {task}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def read_lines(path: Path, task: str) -> list[str]:
    """The file's lines without line ends; BOM, CRLF and a missing final newline handled."""
    # utf-8-sig drops MRPC's byte-order mark, which would otherwise glue itself to the
    # first header name ("\ufeffQuality").
    text = read_text(path, task, encoding="utf-8-sig")
    # Split on "\n" only: str.splitlines() would also break on \x1c, \x85, \u2028 ... that
    # can legitimately occur inside a sentence. MRPC and TREC use CRLF line ends.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def unquote(field: str) -> str:
    """Undo CSV-style quoting of one field: `"a ""b"" c"` -> `a "b" c`; others unchanged."""
    if len(field) >= 2 and field.startswith('"') and field.endswith('"'):
        return field[1:-1].replace('""', '"')
    return field


def _rows(lines: list[str], path: Path, task: str, n_fields: int, first_lineno: int) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(lines, start=first_lineno):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise DataError(
                f"task {task}: {path}:{lineno}: expected {n_fields} tab-separated fields, "
                f"found {len(fields)}"
            )
        rows.append((lineno, fields))
    if not rows:
        raise DataError(f"task {task}: {path} has no data rows")
    return rows


def _column(header: list[str], name: str, path: Path, task: str) -> int:
    if name not in header:
        raise DataError(
            f"task {task}: {path} has no column {name!r}; columns are {', '.join(header)}"
        )
    return header.index(name)


def parse_label(raw: str, label_names: list[str], where: str) -> int:
    """A label written as its name or as its index (RTE ships both styles across copies)."""
    value = raw.strip()
    if value in label_names:
        return label_names.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(label_names):
        return int(value)
    raise DataError(
        f"{where}: unknown label {raw!r}; expected one of {', '.join(label_names)} "
        f"or an index 0..{len(label_names) - 1}"
    )


# --------------------------------------------------------------------------- row formats


def _header_tsv(
    path: Path,
    task: str,
    label_names: list[str],
    text_col: str,
    label_col: str,
    pair_col: str | None = None,
    quoted: bool = False,
) -> list[ClassificationExample]:
    """A TSV with a header row; columns are found by name, not position."""
    lines = read_lines(path, task)
    if not lines:
        raise DataError(f"task {task}: {path} is empty")
    header = [name.strip() for name in lines[0].split("\t")]
    text_i = _column(header, text_col, path, task)
    label_i = _column(header, label_col, path, task)
    pair_i = _column(header, pair_col, path, task) if pair_col else None
    examples = []
    for lineno, fields in _rows(lines[1:], path, task, len(header), first_lineno=2):
        if quoted:
            fields = [unquote(f) for f in fields]
        label = parse_label(fields[label_i], label_names, f"task {task}: {path}:{lineno}")
        pair = fields[pair_i].strip() if pair_i is not None else None
        examples.append(ClassificationExample(fields[text_i].strip(), label, pair))
    return examples


def _headerless_tsv(
    path: Path,
    task: str,
    label_names: list[str],
    text_of: Callable[[str], str] = str.strip,
    quoted: bool = False,
) -> list[ClassificationExample]:
    """`text<TAB>label` lines without a header; `text_of` cleans the text part."""
    examples = []
    for lineno, line in enumerate(read_lines(path, task), start=1):
        if not line.strip():
            continue
        # rsplit: the label is always the last field, a tab inside the text stays text.
        parts = line.rsplit("\t", 1)
        where = f"task {task}: {path}:{lineno}"
        if len(parts) != 2:
            raise DataError(f"{where}: expected 'text<TAB>label', found no tab")
        label = parse_label(parts[1], label_names, where)
        text = unquote(parts[0]) if quoted else parts[0]
        examples.append(ClassificationExample(text_of(text), label))
    if not examples:
        raise DataError(f"task {task}: {path} has no data rows")
    return examples


def _trec_question(text: str) -> str:
    # TREC lines are "fine_label question": the fine label is a single lower-case word
    # ("ind", "other", "def" ...) without the "HUM:" prefix of the original release.
    parts = text.strip().split(" ", 1)
    return parts[1].strip() if len(parts) == 2 else parts[0]


# --------------------------------------------------------------------------- assembly


def _assemble(
    name: str,
    data_dir: Path,
    folder: str,
    files: tuple[str, str],
    read: Callable[[Path], list[ClassificationExample]],
    label_names: list[str],
    extra_metrics: tuple[str, ...] = (),
    eval_note: str = "",
    **meta: str,
) -> TaskData:
    """Read `files` = (train, eval) under data_dir/folder with `read` into a TaskData."""
    data_dir = Path(data_dir)
    train_file, eval_file = (data_dir / folder / f for f in files)
    train, eval_ = read(train_file), read(eval_file)
    note = f"; {eval_note}" if eval_note else ""
    return TaskData(
        name=name,
        kind="classification",
        label_names=list(label_names),
        train=train,
        eval=eval_,
        eval_split=f"{folder}/{files[1]} ({len(eval_):,} rows{note})",
        extra_metrics=extra_metrics,
        source=str(data_dir / folder),
        meta={"train_file": str(train_file), "eval_file": str(eval_file), **meta},
    )


def load_rte(data_dir: Path) -> TaskData:
    read = partial(
        _header_tsv, task="rte", label_names=RTE_LABELS, text_col="sentence1",
        pair_col="sentence2", label_col="label", quoted=True,
    )  # fmt: skip
    return _assemble("rte", data_dir, "glue/RTE", ("train.tsv", "dev.tsv"), read, RTE_LABELS)


def load_mrpc(data_dir: Path) -> TaskData:
    # Quality 1 = paraphrase = "equivalent" = index 1, as in GLUE. No CSV quoting here:
    # the quotes in the strings are the text's own, often unbalanced.
    read = partial(
        _header_tsv, task="mrpc", label_names=MRPC_LABELS, text_col="#1 String",
        pair_col="#2 String", label_col="Quality",
    )  # fmt: skip
    return _assemble(
        "mrpc", data_dir, "glue/MRPC", ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"),
        read, MRPC_LABELS, extra_metrics=("f1",), eval_note="GLUE's test set with labels",
        note="train includes GLUE's 408-pair dev set; its last 4 rows are toy pairs (IDs -1)",
    )  # fmt: skip


def load_cola(data_dir: Path) -> TaskData:
    read = partial(_headerless_tsv, task="cola", label_names=COLA_LABELS)
    return _assemble(
        "cola", data_dir, "glue/CoLA", ("train.tsv", "dev.tsv"), read, COLA_LABELS,
        extra_metrics=("mcc",), eval_note="out-of-domain dev, not GLUE's 1,043-row dev",
    )  # fmt: skip


def load_sst2(data_dir: Path) -> TaskData:
    # dev.tsv is the rest of GLUE's train split, not an eval set: left out so that train is
    # one file and test.tsv (GLUE's labelled dev) stays the only eval.
    read = partial(
        _header_tsv, task="sst2", label_names=SST2_LABELS, text_col="sentence", label_col="label"
    )
    return _assemble(
        "sst2", data_dir, "glue/SST-2", ("train.tsv", "test.tsv"), read, SST2_LABELS,
        eval_note="GLUE's dev set with labels; dev.tsv not used",
        note="glue/SST-2/dev.tsv (6,735 more train rows) is not loaded",
    )  # fmt: skip


def load_agnews(data_dir: Path) -> TaskData:
    read = partial(_headerless_tsv, task="agnews", label_names=AGNEWS_LABELS, quoted=True)
    return _assemble("agnews", data_dir, "agnews", ("dev.tsv", "test.tsv"), read, AGNEWS_LABELS)


def load_trec(data_dir: Path) -> TaskData:
    read = partial(_headerless_tsv, task="trec", label_names=TREC_LABELS, text_of=_trec_question)
    return _assemble(
        "trec", data_dir, "trec", ("train.txt", "test.txt"), read, TREC_LABELS,
        eval_note="coarse labels", note="train.txt repeats many questions (kept as shipped)",
    )  # fmt: skip
