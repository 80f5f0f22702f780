"""Bad input ends in one readable line and changes nothing: each class of mistake a row."""

from __future__ import annotations

import pytest

from forgetlab.cli import main
from forgetlab.errors import ForgetlabError
from forgetlab.resolve import load_config
from forgetlab.rundir import RunDir


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
