"""Fuzzed configs: a valid tiny config mutated at random paths (keys dropped, unknown keys
added, values replaced by other types, NaN, infinities, huge integers, empty strings, nested
mappings and lists) either resolves to a valid Config or is refused with forgetlab's one-line
error — never another exception. The same for sweep configs, for override strings, and for
random bytes and random YAML read as a config file through the CLI."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
import yaml
from fuzz_support import fuzz_settings, outcome
from hypothesis import given
from hypothesis import strategies as st

from forgetlab.cli import main
from forgetlab.config import Config
from forgetlab.errors import ConfigError
from forgetlab.resolve import load_config
from forgetlab.sweeps.trial import load_sweep_config

# A valid config touching every section: a registry task, a file task (its files are never
# read: resolving a config checks no data), a method with its own keys, a regulariser, a
# probe, variants. Resolving it loads no model.
BASE: dict[str, Any] = {
    "name": "fuzz",
    "tasks": ["rte", {"name": "own", "type": "file", "train": "a.csv", "eval": "b.csv"}],
    "model": {"max_length": 64, "pooling": "auto"},
    "data": {"max_train_examples": 8, "max_eval_examples": 8},
    "method": {"name": "lora", "r": 4, "target_modules": ["query", "value"]},
    "regularizer": {"name": "ewc", "lambda": 10.0},
    "probes": [{"name": "mc", "type": "file", "kind": "multiple_choice", "eval": "mc.jsonl"}],
    "training": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "max_grad_norm": 1.0},
    "eval": {"batch_size": 8, "every": 0.5},
    "output": {"dir": "runs/fuzz", "checkpoints": "last"},
    "seeds": [1, 2],
    "variants": [{"name": "slow", "overrides": ["training.lr=1e-4"]}],
}
SWEEP_BASE: dict[str, Any] = {
    **{k: v for k, v in BASE.items() if k != "variants"},
    "sweep": {
        "methods": ["full", "lora"],
        "space": {"training.lr": {"log": [1e-4, 1e-3], "per_decade": 2}},
        "per_method": {"full": {"method.r": None}},
        "seeds": [1],
        "objectives": ["learning", "forgetting"],
    },
}
# Real key names, so that added keys also hit known fields of the wrong section.
KEYS = sorted(
    {"name", "type", "kind", "lambda", "r", "lr", "every", "log", "per_decade", "overrides"}
    | {k for section in BASE.values() if isinstance(section, dict) for k in section}
    | set(BASE)
    | set(SWEEP_BASE["sweep"])
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.sampled_from([2**32, 10**400]),  # over numpy's seeds; over a float's range
    st.floats(),  # NaN and both infinities included
    st.sampled_from([0, -1, 0.0, -0.0, 1e-300, 1e308, "", " ", "nan", "inf", "1e-3", "\n"]),
    st.text(max_size=12),
    st.sampled_from(KEYS),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into the tree (dict keys and list indices), the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    out = []
    for key, child in items:
        out.append((*prefix, key))
        if isinstance(child, dict | list):
            out.extend(_paths(child, (*prefix, key)))
    return out


def _containers(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every mapping in the tree, the root included."""
    out = [prefix] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if isinstance(child, dict | list):
            out.extend(_containers(child, (*prefix, key)))
    return out


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` after 1-4 random edits: drop a key or item, replace a value, add a key."""
    tree = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "replace", "replace", "add"]))
        paths = _paths(tree)
        if op == "add" or not paths:
            where = _at(tree, draw(st.sampled_from(_containers(tree))))
            where[draw(keys)] = draw(values)
            continue
        path = draw(st.sampled_from(paths))
        parent = _at(tree, path[:-1])
        if op == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return tree


def _check_config(config: Config | None) -> None:
    if config is None:
        return
    assert isinstance(config, Config) and config.tasks
    # What validation promised: finite positive numbers where they must be.
    assert math.isfinite(config.training.lr) and config.training.lr > 0
    assert config.training.batch_size >= 1 and len(set(config.seeds)) == len(config.seeds)


def test_the_unmutated_configs_are_valid():
    """The starting points resolve as they are (else every mutation would be refused)."""
    assert isinstance(load_config(raw=BASE), Config)
    assert load_sweep_config(raw=SWEEP_BASE).spec.grid()


@fuzz_settings(150)
@given(mutated(BASE))
def test_a_mutated_config_resolves_or_is_refused_in_one_line(raw):
    _check_config(outcome(lambda: load_config(raw=raw)))


@fuzz_settings(80)
@given(mutated(SWEEP_BASE))
def test_a_mutated_sweep_config_resolves_or_is_refused_in_one_line(raw):
    outcome(lambda: load_sweep_config(raw=raw))


override_keys = st.one_of(
    st.sampled_from(
        ["training.lr", "method.name", "method.r", "seeds", "tasks", "eval.every", "model"]
    ),
    st.text(max_size=12),
)


@fuzz_settings(60)
@given(st.lists(st.tuples(override_keys, st.text(max_size=12)), min_size=1, max_size=3))
def test_random_overrides_resolve_or_are_refused_in_one_line(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    _check_config(outcome(lambda: load_config(raw=BASE, overrides=overrides)))


yaml_text = st.one_of(
    st.builds(lambda v: yaml.safe_dump(v, allow_unicode=True), values),
    st.text(max_size=80),
    st.sampled_from(["tasks: [rte]\nseeds: " + "1" * 5000, "tasks: " + "[" * 5000 + "]" * 5000]),
    st.builds(lambda raw: yaml.safe_dump(raw), mutated(BASE)),
)


def _validate_file(tmp_path, data: bytes, capsys) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    if code != 0:
        assert code == 2 and err.startswith("forgetlab: error: ") and err.count("\n") == 1, err


@fuzz_settings(40)
@given(data=st.one_of(st.binary(max_size=64), yaml_text.map(str.encode)))
def test_a_random_config_file_validates_or_is_refused_in_one_line(tmp_path, capsys, data):
    _validate_file(tmp_path, data, capsys)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "tasks: [rte]\nseeds: " + "1" * 5000,
            r"not valid YAML: Exceeds the limit",
        ),
        ("tasks: " + "[" * 5000 + "]" * 5000, r"not valid YAML: maximum recursion depth"),
    ],
)
def test_yaml_that_pyyaml_cannot_build_is_one_line(tmp_path, capsys, text, message):
    """Found by fuzzing: PyYAML raises ValueError (an integer of over 4300 digits) and
    RecursionError (lists nested thousands deep), not its YAMLError: tracebacks."""
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


@pytest.mark.slow
@fuzz_settings(2000)
@given(mutated(BASE))
def test_many_mutated_configs(raw):
    _check_config(outcome(lambda: load_config(raw=raw)))


@pytest.mark.slow
@fuzz_settings(1000)
@given(mutated(SWEEP_BASE))
def test_many_mutated_sweep_configs(raw):
    outcome(lambda: load_sweep_config(raw=raw))


@pytest.mark.slow
@fuzz_settings(400)
@given(data=st.one_of(st.binary(max_size=256), yaml_text.map(str.encode)))
def test_many_random_config_files(tmp_path, capsys, data):
    _validate_file(tmp_path, data, capsys)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"tasks": [{"name": "rte", 1: "x"}]}, r"config\.tasks\[0\]: key 1 is not a name"),
        ({"tasks": ["rte"], "method": {"name": ["lora"]}}, r"unknown method \['lora'\]"),
        ({"tasks": ["rte"], "regularizer": {"name": {}}}, r"unknown regularizer\.name=\{\}"),
        ({"tasks": [{"name": "t", "columns": {"a": 1}}]}, r"columns\.a must be a string"),
        ({"tasks": ["rte"], "training": {"lr\nrate": 1}}, r"unknown key config\.training\.lr rate"),
        ({"tasks": ["rte"], "training": {"lr": 10**400}}, r"lr is too large a number"),
        ({"tasks": ["rte"], "seeds": [1, 2**32]}, r"seeds: 4294967296 is not a seed from 0"),
        ({"tasks": ["rte"], "seeds": [-1]}, r"seeds: -1 is not a seed from 0 to 4294966"),
    ],
)
def test_what_fuzzing_found_in_configs_is_one_line(raw, message):
    """Found by the properties above: keys that are not text (YAML reads `1:` as an int)
    broke the unknown-key check's sorting; a list as a method's or a regulariser's name
    is unhashable; a mapping's values went unchecked; a key with a line break made a
    message of two lines; an integer of 400 digits where a number goes overflowed float();
    a seed of 2**32 or -1 passed and failed in numpy when the run began."""
    with pytest.raises(ConfigError, match=message):
        load_config(raw=raw)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"training.lr": {"log": [1e-5, 1e-3], "per_decade": 10**7}}, r"20000001 values"),
        ({"training.lr": {"log": [1e-300, 1e300]}}, r"spans too many decades"),
        ({"training.lr": {"log": [1e-5, "inf"]}}, r"needs finite low > 0 and high > 0"),
        ({f"method.k{i}": list(range(4)) for i in range(8)}, r"grid has 65,536 points"),
    ],
)
def test_a_sweep_too_large_to_check_is_refused(space, message):
    """Found by fuzzing: a huge per_decade built a list of millions of values (the check
    hung), a range of 1e-300..1e300 overflowed to a traceback; every grid point is resolved
    before anything runs, so a grid of millions is refused at once."""
    with pytest.raises(ConfigError, match=message):
        load_sweep_config(raw={**SWEEP_BASE, "sweep": {"methods": ["lora"], "space": space}})


def test_a_user_error_is_one_line_whatever_it_embeds():
    """ForgetlabError's own guarantee: a library's multi-line text inside a message (PyYAML's
    reader errors are two lines) still prints as one."""
    error = ConfigError('value is not valid YAML (bad character\n  in "<unicode string>")')
    assert str(error) == 'value is not valid YAML (bad character in "<unicode string>")'
    with pytest.raises(ConfigError, match=r"not valid YAML \(unacceptable character #x001f"):
        load_config(raw={"tasks": ["rte"]}, overrides=["training.lr=\x1f"])


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "section, value",
    [
        ("training", {"lr": float("nan")}),
        ("method", {"name": "lora", "r": "eight"}),
        ("regularizer", {"name": ["ewc"]}),
        ("tasks", [{"name": "own", "type": "file", "train": "a.csv", 1: "b.csv"}]),
    ],
)
def test_a_refused_config_writes_nothing(tmp_path, capsys, section, value):
    """`forgetlab run` checks the whole config before it creates the run directory: a bad
    one leaves no folder behind (not even config.yaml), one line on stderr, exit 2."""
    raw = {**copy.deepcopy(BASE), "variants": [], section: value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("forgetlab: error: ") and err.count("\n") == 1, err
    assert not out.exists()
