"""Config parsing and validation: every bad input ends in one ConfigError naming the key."""

from pathlib import Path

import pytest
import yaml

from forgetlab import load_config
from forgetlab.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
BASE = {"tasks": ["rte", "mrpc"]}


def test_defaults_and_shorthand():
    cfg = load_config(raw=BASE)
    assert cfg.task_names == ["rte", "mrpc"]
    assert cfg.method == {"name": "full"}
    assert cfg.model.name == "packaged:minilm" and cfg.model.trust_remote_code is False
    assert cfg.heads == "per_task"


def test_overrides_are_yaml_typed():
    cfg = load_config(
        raw=BASE,
        overrides=[
            "training.lr=1e-3",
            "seeds=[1,2]",
            "method.name=lora",
            "method.r=4",
            "training.batch_size=8",
        ],
    )
    assert cfg.training.lr == pytest.approx(1e-3)
    assert cfg.seeds == [1, 2]
    assert cfg.method == {"name": "lora", "r": 4}
    assert cfg.training.batch_size == 8


def test_switching_method_drops_the_old_methods_keys():
    raw = {**BASE, "method": {"name": "lora", "r": 8}}
    cfg = load_config(raw=raw, overrides=["method.name=full"])
    assert cfg.method == {"name": "full"}


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        (BASE, ["training.lr_rate=1"], "unknown key config.training.lr_rate"),
        (BASE, ["bogus=1"], "unknown key config.bogus"),
        (BASE, ["method.name=nope"], "unknown method 'nope'"),
        (BASE, ["method.name=lora", "method.rank=4"], "unknown key method.rank"),
        (BASE, ["method.name=lora", "method.r=0"], "method.r=0 must be a positive rank"),
        (BASE, ["training.lr=fast"], "training.lr must be a number"),
        (BASE, ["training.batch_size=2.5"], "training.batch_size must be an integer"),
        (BASE, ["training.mixed_precision=fp8"], "training.mixed_precision='fp8'"),
        (BASE, ["training.dropout_masks=philox"], "training.dropout_masks='philox' is not one"),
        (BASE, ["training.lr=-1"], "training.lr=-1.0 must be > 0"),
        ({"tasks": []}, [], "tasks is empty"),
        ({}, [], "missing required key 'tasks'"),
        ({"tasks": ["rte", "rte"]}, [], "repeated: rte"),
        (BASE, ["heads=both"], "heads='both'"),
        (BASE, ["seeds=[]"], "seeds is empty"),
        ({"tasks": [{"name": "mine", "type": "file"}]}, [], "no 'train' and 'eval' paths"),
        (BASE, ["training"], "must look like key.path=value"),
        (BASE, ["eval.every=-2"], "eval.every=-2.0 must be a whole number of steps"),
        (BASE, ["eval.every=0"], "eval.every=0.0 must be a whole number of steps"),
        (BASE, ["eval.every=2.5"], "eval.every=2.5 must be a whole number of steps"),
        (BASE, ["model.type=gpt"], "model.type='gpt' is not one of"),
        (BASE, ["data.long_prompts=cut"], "data.long_prompts='cut' is not one of"),
    ],
)
def test_bad_config_names_the_problem(raw, overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(raw=raw, overrides=overrides)
    assert message in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [rte\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    if "sweep" in yaml.safe_load(path.read_text()):  # a sweep config: every point resolves
        from forgetlab.sweeps.trial import load_sweep_config

        assert load_sweep_config(path).spec.grid()
        with pytest.raises(ConfigError, match="has a sweep: section: run it with"):
            load_config(path)
        return
    cfg = load_config(path)
    assert cfg.tasks


def test_variants_expand_and_validate_up_front():
    from forgetlab.resolve import variant_configs

    raw = {
        **BASE,
        "output": {"dir": "runs/cmp"},
        "variants": [
            {"name": "full", "overrides": ["training.lr=2e-5"]},
            {"name": "lora", "overrides": ["method.name=lora", "method.r=4", "training.lr=1e-3"]},
        ],
    }
    children = dict(variant_configs(load_config(raw=raw)))
    assert children["lora"].method == {"name": "lora", "r": 4}
    assert children["lora"].output.dir == "runs/cmp/lora"
    assert children["full"].training.lr == pytest.approx(2e-5)
    raw["variants"][1]["overrides"].append("method.r=-1")
    with pytest.raises(ConfigError, match="variant 'lora': method.r=-1"):
        load_config(raw=raw)


def test_regularizer_source_must_name_tasks_of_the_run():
    ok = load_config(
        raw=BASE,
        overrides=["method.name=lora", "regularizer.name=laplace", "regularizer.source=[rte]"],
    )
    assert ok.regularizer["source"] == ["rte"]
    with pytest.raises(
        ConfigError, match="regularizer.source names sst2, which is neither a task of this run"
    ):
        load_config(raw=BASE, overrides=["regularizer.name=laplace", "regularizer.source=[sst2]"])
    with pytest.raises(ConfigError, match="unknown regularizer.name='nope'"):
        load_config(raw=BASE, overrides=["regularizer.name=nope"])


def test_source_data_defaults_to_earlier_tasks_and_follows_the_config():
    from types import SimpleNamespace

    from forgetlab.recipe.run import source_data

    tasks = [SimpleNamespace(name=n, train=f"{n}-data") for n in ("rte", "mrpc", "cola")]
    plain = load_config(raw={"tasks": ["rte", "mrpc", "cola"]})
    assert source_data(plain, tasks, 1) == []
    assert source_data(plain, tasks, 3) == [("rte", "rte-data"), ("mrpc", "mrpc-data")]
    named = load_config(
        raw={"tasks": ["rte", "mrpc", "cola"]},
        overrides=["regularizer.name=laplace", "regularizer.source=[mrpc]"],
    )
    assert source_data(named, tasks, 1) == [("mrpc", "mrpc-data")]
