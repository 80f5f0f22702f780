"""Bad input ends in one readable line and changes nothing: each class of mistake a row."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from forgetlab.atomic import CHECKSUMS, atomic_dir
from forgetlab.cli import main
from forgetlab.errors import ForgetlabError
from forgetlab.models.device import resolve_device
from forgetlab.resolve import load_config
from forgetlab.rundir import RunDir
from tests.conftest import tiny_raw


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.lr=nan", r"training\.lr=nan must be a finite number"),
        ("training.lr=inf", r"training\.lr=inf must be a finite number"),
        ("training.max_grad_norm=nan", r"max_grad_norm=nan must be a finite number"),
        ("seeds=[1,2,1]", r"seeds repeat 1: give each seed once"),
    ],
)
def test_values_that_pass_a_sign_check_but_are_wrong(override, message):
    with pytest.raises(ForgetlabError, match=message):
        load_config(raw={"tasks": ["rte"]}, overrides=[override])


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\ntasks: [rte]\n".encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not UTF-8 text" in err


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("tasks: [rte\ntraining: {lr: 1}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not valid YAML" in err and "line " in err


def test_a_second_writer_into_one_run_directory_is_refused(tmp_path):
    """Two `forgetlab run` into one --out both passed the "already holds a run" check and
    interleaved their files: the run directory is now locked for its writer."""
    out = RunDir(tmp_path / "run")
    with (
        out.lock(),
        pytest.raises(ForgetlabError, match="being written by another"),
        RunDir(out.path).lock(),
    ):
        pass
    with out.lock():  # released when the holder is done
        pass


# ---------------------------------------------------------------------------------------
# Wrongly accepted: config values that name one thing twice or nothing real


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"tasks": ["sst2", "SST-2"]}, r"'SST-2' is the same task as 'sst2'"),
        ({"tasks": ["rte"], "probes": ["rte"]}, r"probes repeat tasks of the sequence"),
        (
            {"tasks": ["ag_news"], "source_tasks": ["agnews"]},
            r"'agnews' is the same task as 'ag_news'",
        ),
        ({"tasks": ["rte"], "training": {"trackers": ["tensorbord"]}}, r"trackers='tensorbord'"),
        ({"tasks": ["rte"], "training": {"max_grad_norm": float("nan")}}, r"finite number"),
    ],
)
def test_a_config_that_names_one_task_twice_or_an_unknown_tracker(raw, message):
    with pytest.raises(ForgetlabError, match=message):
        load_config(raw=raw)


def test_the_tracker_names_are_accelerates():
    from accelerate.utils import LoggerType

    from forgetlab.config import TRACKERS

    assert set(TRACKERS) == {t.value for t in LoggerType}


def _task_files(tmp_path, train_labels, eval_labels=("a", "b")):
    def write(name, labels):
        path = tmp_path / name
        path.write_text("text,label\n" + "".join(f"row {i},{v}\n" for i, v in enumerate(labels)))
        return path

    return write("train.csv", train_labels), write("eval.csv", eval_labels)


@pytest.mark.parametrize(
    "train, eval_, label_names, message",
    [
        # a stray id among names, a stray value among ids: not an extra class
        (["pos", "neg", "pos", "1"], ["pos", "neg"], None, r"mixes class ids among names: '1' at"),
        (["0", "1", "0", "0.5"], ["0", "1"], None, r"not class ids: '0.5' at .*train\.csv:5"),
        (["0", "1", "x"], ["y", "0", "1", "0"], None, r"'x' at .*train\.csv:4, 'y' at .*eval"),
        # a single class: accuracy 1.0 by construction
        (["pos", "pos"], ["pos", "pos"], None, r"train\.csv holds a single class \('pos'\)"),
        (["1", "1"], ["0", "1"], None, r"single class \('1'\)"),
        (["a", "a"], ["a", "b"], ["a", "b"], r"single class \('a'\)"),
    ],
)
def test_odd_labels_and_single_classes_are_refused(tmp_path, train, eval_, label_names, message):
    from forgetlab.tasks.files import load_file_task

    train_path, eval_path = _task_files(tmp_path, train, eval_)
    with pytest.raises(ForgetlabError, match=message) as error:
        load_file_task("mine", train_path, eval_path, "text", "label", label_names=label_names)
    assert "label" in str(error.value) and "\n" not in str(error.value)


def test_a_bad_forgetlab_threads_value_warns_once_and_is_ignored(capsys):
    """FORGETLAB_THREADS is read on `import forgetlab`: a bad value warns (one line) rather
    than making the package unimportable, and changes no setting."""
    from forgetlab.threads import configure

    for value in ("fast", "0", "-2", "2.5"):
        environ = {"FORGETLAB_THREADS": value}
        assert configure(environ, torch_loaded=False, load=lambda: 0.0) == {}
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"FORGETLAB_THREADS='{value}'" in err and "ignored" in err
    assert configure({"FORGETLAB_THREADS": "2"}, torch_loaded=False)["OMP_NUM_THREADS"] == "2"
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------
# The command line: one line, exit 2, nothing written


def _one_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetlab: error: ") and err.count("\n") == 0, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["report"], ["forgetlab report", "required: run_dirs", "--help"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["compare", "--store", "{tmp}/nosuch.sqlite"], ["nosuch.sqlite does not exist"]),
    ],
)
def test_usage_mistakes_are_one_line(tmp_path, capsys, argv, needles):
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as e:  # argparse's own mistakes exit from the parser
        code = e.code
    assert code == 2
    _one_line(capsys, *needles)
    assert not (tmp_path / "nosuch.sqlite").exists()


def _run_argv(tmp_path, *overrides) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp_path / "run", tasks=("rte",))))
    return ["run", str(path), "--quiet", *overrides]


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["model.max_length=4096"], ["model.max_length=4096 exceeds", "max_position_embeddings"]),
        (["model.type=causal"], ["model.type=causal but packaged:minilm is not a causal LM"]),
        (["output.store={tmp}"], ["is not writable: it is a folder"]),
        (["training.trackers=[tensorbord]"], ["training.trackers='tensorbord' is not one of"]),
        (["training.dropout_masks=fast"], ["training.dropout_masks='fast' is not one of"]),
        (["tasks=[sst2,sst-2]"], ["'sst-2' is the same task as 'sst2'"]),
    ],
)
def test_a_run_that_cannot_work_is_refused_before_it_writes(tmp_path, capsys, overrides, needles):
    argv = _run_argv(tmp_path, *(o.replace("{tmp}", str(tmp_path)) for o in overrides))
    assert main(argv) == 2
    _one_line(capsys, *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_not_run_on_cpu(tmp_path, capsys):
    assert main(_run_argv(tmp_path, "training.device=cuda")) == 2
    _one_line(capsys, "training.device=cuda but this machine has no usable GPU")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ForgetlabError, match=r"--device=cuda:0 but this machine"):
        resolve_device("cuda:0", "--device")


# ---------------------------------------------------------------------------------------
# Writes: a full disk inside safetensors, checkpoint modes and checksums


SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_a_full_disk_inside_safetensors_is_the_disk_full_line(tmp_path):
    """safetensors raises SafetensorError (its text above, as seen on a full tmpfs), not
    OSError: the checkpoint writer still says "disk full", and the earlier folder is kept."""
    final = tmp_path / "stage-1-rte"
    with atomic_dir(final) as tmp:
        (tmp / "heads.safetensors").write_bytes(b"earlier")
    before = _snapshot(tmp_path)
    with (
        pytest.raises(ForgetlabError, match=r"disk full while writing .*stage-1-rte"),
        atomic_dir(final),
    ):
        raise SafetensorError(SAFETENSORS_ENOSPC)
    assert _snapshot(tmp_path) == before  # no temp folder left, the old checkpoint intact
    with pytest.raises(SafetensorError), atomic_dir(final):  # other errors: not "disk full"
        raise SafetensorError("Error while serializing: invalid dtype")


def test_a_real_full_tmpfs_during_a_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        from safetensors.torch import save_file

        with (
            pytest.raises(ForgetlabError, match="disk full while writing"),
            atomic_dir(disk / "stage-1-rte") as tmp,
        ):
            save_file({"w": torch.zeros(1 << 18)}, str(tmp / "heads.safetensors"))
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (names relative), with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------------------
# A finished run, then damaged copies of it


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-stage LoRA run, two steps a stage, every checkpoint kept."""
    tmp = tmp_path_factory.mktemp("finished")
    raw = tiny_raw(tmp / "run", "lora", max_steps=2)
    raw["data"] = {"max_train_examples": 16, "max_eval_examples": 16}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet"]) == 0
    return tmp / "run"


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path: Path) -> None:
    """Random bytes in the middle of a tensor: the same size, a plausible file."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 + len(data) // 4
    data[middle : middle + 8] = os.urandom(8)
    path.write_bytes(bytes(data))


def _set_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def _future(path: Path) -> None:
    data = json.loads(path.read_text())
    data["version"] = "9.0.0"
    path.write_text(json.dumps(data))


def _unfinish(run: Path) -> None:
    """As if killed during stage 2: state.json holds the base row and stage 1 only."""
    state = json.loads((run / "seed-1" / "state.json").read_text())
    state["rows"], state["stages"] = state["rows"][:2], state["stages"][:1]
    (run / "seed-1" / "state.json").write_text(json.dumps(state))
    for path in (run / "metrics.json", run / "seed-1" / "metrics.json"):
        path.unlink()


def _no_sums(run: Path) -> None:
    for path in run.rglob(CHECKSUMS):
        path.unlink()


ADAPTER = "seed-1/checkpoints/stage-2-sst2/backbone/adapter_model.safetensors"
ADAPTER_1 = "seed-1/checkpoints/stage-1-rte/backbone/adapter_model.safetensors"
COMMANDS = {
    "compare": lambda run: ["compare", str(run)],
    "analyze": lambda run: ["analyze", str(run), "--spectrum", "--quiet"],
    "report": lambda run: ["report", str(run), "--out", str(run.parent / "r.html")],
    "resume": lambda run: ["run", str(run / "config.yaml"), "--out", str(run), "--resume"],
}


@pytest.mark.parametrize(
    "damage, file, commands",
    [
        (lambda r: _truncate(r / "metrics.json"), "metrics.json", COMMANDS),
        (lambda r: _set_json(r / "metrics.json", None), "metrics.json", COMMANDS),
        (lambda r: _set_json(r / "metrics.json", {}), "metrics.json", COMMANDS),
        (lambda r: _future(r / "metrics.json"), "metrics.json", COMMANDS),
        (lambda r: _truncate(r / "seed-1/state.json"), "seed-1/state.json", ["resume"]),
        (lambda r: _future(r / "seed-1/state.json"), "seed-1/state.json", ["resume"]),
        (lambda r: _truncate(r / "seed-1/metrics.json"), "seed-1/metrics.json", ["resume"]),
        (lambda r: _truncate(r / ADAPTER), ADAPTER, ["analyze"]),
        (lambda r: _flip_bytes(r / ADAPTER), ADAPTER, ["analyze"]),
        (lambda r: (_unfinish(r), _truncate(r / ADAPTER_1)), ADAPTER_1, ["resume"]),
        (lambda r: (_unfinish(r), _flip_bytes(r / ADAPTER_1)), ADAPTER_1, ["resume"]),
        # a checkpoint written before checksums were recorded: its safetensors header
        (lambda r: (_unfinish(r), _no_sums(r), _truncate(r / ADAPTER_1)), ADAPTER_1, ["resume"]),
        (lambda r: (_no_sums(r), _truncate(r / ADAPTER)), ADAPTER, ["analyze"]),
    ],
)
def test_a_damaged_run_is_refused_naming_the_file_and_nothing_changes(
    copy, capsys, damage, file, commands
):
    damage(copy)
    before = _snapshot(copy.parent)
    for command in commands:
        assert main(COMMANDS[command](copy)) == 2, command
        err = _one_line(capsys, str(copy / file))
        assert "Traceback" not in err
        assert _snapshot(copy.parent) == before, f"{command} changed files"


def test_checkpoints_carry_checksums_and_the_umasks_mode(finished):
    mode = 0o666 & ~_umask()
    for stage in (finished / "seed-1" / "checkpoints").iterdir():
        sums = json.loads((stage / CHECKSUMS).read_text())
        files = {str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()}
        assert set(sums) == files - {CHECKSUMS} and "heads.safetensors" in sums
        for path in stage.rglob("*"):
            if path.is_file():
                assert path.stat().st_mode & 0o777 == mode, path
    assert (finished / "metrics.json").stat().st_mode & 0o777 == mode


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_without_checkpoints_and_after_a_kill_mid_checkpoint(copy, finished, capsys):
    """output.checkpoints: none, killed after the last state.json write: every row is in
    state.json, so --resume writes the metrics without a checkpoint; the half-written
    temporary folder of a checkpoint killed mid-write is cleared under the run's lock."""
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["output"]["checkpoints"] = "none"
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.rmtree(copy / "seed-1" / "checkpoints")
    for path in (copy / "metrics.json", copy / "seed-1" / "metrics.json"):
        path.unlink()
    stale = copy / "seed-1" / "checkpoints" / ".stage-2-sst2.x1y2.tmp"
    (stale / "backbone").mkdir(parents=True)
    (stale / "heads.safetensors").write_bytes(b"half")
    (copy / "seed-1" / ".state.json.abc.tmp").write_text("{")
    assert main(COMMANDS["resume"](copy)) == 0
    resumed = json.loads((copy / "seed-1" / "metrics.json").read_text())
    original = json.loads((finished / "seed-1" / "metrics.json").read_text())
    assert resumed["accuracy_matrix"] == original["accuracy_matrix"] and resumed["complete"]
    assert not stale.exists() and not list(copy.rglob(".*.tmp"))


def test_compare_shows_the_run_directory_of_runs_with_one_name(finished, tmp_path, capsys):
    other = tmp_path / "again"
    shutil.copytree(finished, other)
    assert main(["compare", str(finished), str(other)]) == 0
    out = capsys.readouterr().out
    assert str(finished) in out and str(other) in out


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "{run}", "--spectrum", "--quiet"],
        ["hessian", "{run}", "--quiet"],
        ["eval", "{run}", "--lm-eval", "bb_date_understanding"],
    ],
)
def test_reading_a_run_never_turns_remote_code_on(copy, capsys, argv):
    """A run directory's config.yaml asking for trust_remote_code is refused by whoever
    analyses or evaluates it, unless they pass --trust-remote-code themselves."""
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["trust_remote_code"] = True
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    before = _snapshot(copy)
    assert main([a.replace("{run}", str(copy)) for a in argv]) == 2
    _one_line(capsys, "sets model.trust_remote_code: true", "--trust-remote-code")
    assert _snapshot(copy) == before
    assert RunDir(copy).config(trust_remote_code=True).model.trust_remote_code
