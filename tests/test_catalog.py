"""What the listing commands show: `forgetlab methods` (every plug-in family with keys,
defaults and paper), `forgetlab tasks` (kind, split sizes, floor, source) and the resolved
plug-in keys of `forgetlab validate`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import yaml

from forgetlab import catalog
from forgetlab.catalog import (
    REQUIRED,
    Plugin,
    Section,
    config_keys,
    format_plugins,
    registry_plugins,
    resolved_keys,
)
from forgetlab.cli import main
from forgetlab.config import from_dict
from forgetlab.methods import METHODS
from forgetlab.regularizers import REGULARIZERS
from forgetlab.strategies import STRATEGIES
from forgetlab.tasks.registry import TASK_REGISTRY
from tests.conftest import needs_data


def _entries(text: str) -> dict[str, list[str]]:
    """heading -> the plug-in names listed under it (entry lines are indented by two)."""
    out: dict[str, list[str]] = {}
    heading = None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            heading = line.split()[0]
            out[heading] = []
        elif line.startswith("  ") and not line.startswith("   "):
            out[heading].append(line.split()[0])
    return out


def _block(text: str, name: str) -> str:
    """The lines of one entry: its own and the detail lines below it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} "))
    end = start + 1
    while end < len(lines) and lines[end].startswith("   "):
        end += 1
    return "\n".join(lines[start:end])


def test_methods_lists_every_method_regulariser_and_strategy_with_paper_and_keys(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert _entries(text) == {
        "methods": sorted(METHODS),
        "regularizers": sorted(REGULARIZERS),
        "strategies": sorted(STRATEGIES),
        "guard": ["guard"],
    }
    assert "keys: watch=[], max_loss=0.02, every=50, action=stop" in _block(text, "guard")
    assert "Hu et al. 2021, arXiv:2106.09685" in text
    lora = _block(text, "lora")
    assert "keys: r=8, lora_alpha=16, lora_dropout=0.05, target_modules=[query, value]" in lora
    ewc = _block(text, "ewc")
    assert "lambda=5000.0" in ewc and "fisher_samples=500" in ewc and "lam=" not in ewc
    assert max(len(line) for line in text.splitlines()) <= 100


@pytest.mark.parametrize("section", catalog.SECTIONS, ids=lambda s: s.title)
def test_every_registered_plugin_names_its_paper_and_summary(section):
    missing = [p.name for p in section.plugins() if not p.reference or not p.summary]
    assert missing == [], f"{section.title} without a `reference` or `summary`: {missing}"


@dataclass
class _ToyConfig:
    name: str
    needed: int
    rate: float = 0.5
    lam: float = 1.0
    layers: list[str] = field(default_factory=lambda: ["a", "b"])


class _Toy:
    summary = "a toy plug-in"
    reference = "Nobody 2026"
    config_cls = _ToyConfig


def test_config_keys_give_defaults_factories_required_keys_and_yaml_names():
    assert config_keys(_ToyConfig, {"lam": "lambda"}) == {
        "needed": REQUIRED,
        "rate": 0.5,
        "lambda": 1.0,
        "layers": ["a", "b"],
    }
    cfg = _ToyConfig(name="toy", needed=3)
    assert resolved_keys(cfg, {"lam": "lambda"}) == {
        "name": "toy",
        "needed": 3,
        "rate": 0.5,
        "lambda": 1.0,
        "layers": ["a", "b"],
    }


def test_a_new_plugin_family_is_one_section(monkeypatch, capsys):
    """What a strategies (or guard) family adds: one Section, listed and resolved."""
    toy = Section(
        "strategies",
        "method",  # a section key that a Config has (a real family adds its own field)
        "strategy.name=<name>",
        lambda: registry_plugins({"toy": _Toy}),
        lambda section: resolved_keys(from_dict(_ToyConfig, {**section, "needed": 1})),
    )
    monkeypatch.setattr(catalog, "SECTIONS", [toy])
    text = format_plugins(catalog.SECTIONS)
    assert _entries(text) == {"strategies": ["toy"]}
    assert "keys: needed=(required), rate=0.5, lam=1.0, layers=[a, b]" in text
    assert "Nobody 2026" in text
    from forgetlab.config import build_config

    config = build_config({"tasks": ["rte"], "method": {"name": "toy"}})
    assert catalog.resolved_sections(config) == {
        "method": {"name": "toy", "needed": 1, "rate": 0.5, "lam": 1.0, "layers": ["a", "b"]}
    }
    assert Plugin("toy", _Toy.summary, _Toy.reference, config_keys(_ToyConfig)) in toy.plugins()


# --------------------------------------------------------------------------- validate


def test_validate_prints_the_resolved_method_and_regulariser_and_reloads(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    raw = {
        "tasks": ["rte"],
        "method": {"name": "lora", "r": 4},
        "regularizer": {"name": "ewc", "lambda": 10},
        "variants": [{"name": "dora", "overrides": ["method.name=dora"]}],
    }
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["method"] == {
        "name": "lora",
        "r": 4,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": ["query", "value"],
    }
    assert (
        printed["regularizer"]["lambda"] == 10 and printed["regularizer"]["fisher_samples"] == 500
    )
    assert "lam" not in printed["regularizer"]
    variant = [line for line in text.splitlines() if line.startswith("# variant dora:")]
    assert variant == [  # switching method.name starts from the new method's defaults: r = 8
        "# variant dora: method: {name: dora, r: 8, lora_alpha: 16, lora_dropout: 0.05, "
        "target_modules: [query, value]}; regularizer: {name: ewc, lambda: 10.0, "
        "fisher_samples: 500, fisher: empirical, include_heads: true, seed: 0}"
    ]
    again = tmp_path / "printed.yaml"
    again.write_text(text)  # what validate prints is itself a valid config, the same one
    assert main(["validate", str(again)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed


def test_validate_without_regulariser_prints_none(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["rte"], "regularizer": {"name": "none"}}))
    assert main(["validate", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == {"name": "full"} and printed["regularizer"] == {"name": "none"}
    assert printed["strategy"] is None


@pytest.mark.parametrize("as_list", [False, True])
def test_validate_resolves_a_strategy_or_a_list_of_them(tmp_path, capsys, as_list):
    replay = {"name": "replay", "ratio": 0.5}
    value = [replay, {"name": "lwf"}] if as_list else replay
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["rte", "sst2"], "strategy": value}))
    assert main(["validate", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["strategy"]
    expected = [
        {"name": s.name, **catalog.config_keys(s.config_cls)}
        for s in (STRATEGIES["replay"], STRATEGIES["lwf"])
    ]
    expected[0]["ratio"] = 0.5
    assert printed == (expected if as_list else expected[0])


def test_validate_resolves_the_guard(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    raw = {"tasks": ["rte", "sst2"], "guard": {"watch": ["rte"], "action": "rollback"}}
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["guard"]
    assert printed == {"watch": ["rte"], "max_loss": 0.02, "every": 50, "action": "rollback",
                       "reduce": "mean"}  # fmt: skip


def test_the_quickstart_validates_on_mpnet_by_one_override(capsys):
    assert main(["validate", "configs/quickstart.yaml", "model.name=packaged:mpnet"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "packaged:mpnet" and printed["model"]["pooling"] == "mean"


# --------------------------------------------------------------------------- tasks


@needs_data
def test_tasks_lists_every_registered_task_with_sizes_floor_and_source(capsys):
    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1 : len(TASK_REGISTRY) + 1]}
    assert set(rows) == set(TASK_REGISTRY)
    # the sizes of shared/data's README; RTE's majority is the one the quickstart prints
    assert rows["rte"][:6] == ["rte", "classification", "2,490", "277", "majority", "0.527"]
    assert rows["rte"][6:9] == ["shipped", "glue/RTE;", "hub"]
    assert rows["agnews"][2:6] == ["10,001", "7,600", "majority", "0.250"]
    assert rows["bb_strategyqa"][1:6] == ["multiple_choice", "0", "2,290", "chance", "0.500"]
    assert rows["tinyshakespeare"][1:5] == ["text", "507", "57", "-"]
    assert "own data: a task with type: file" in text


def test_floors_are_the_majority_class_and_the_mean_chance_of_guessing():
    from forgetlab.tasks.base import ClassificationExample, MCExample

    labels = [ClassificationExample("x", y) for y in (0, 1, 1, 2)]
    assert catalog.task_floor("classification", labels) == "majority 0.500"
    questions = [MCExample("q", ["a", "b"], 0), MCExample("q", ["a", "b", "c", "d"], 1)]
    assert catalog.task_floor("multiple_choice", questions) == "chance 0.375"
    assert catalog.task_floor("text", []) == "-"


def test_tasks_of_a_config_show_own_files_and_unreadable_ones(tmp_path, capsys):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\na,pos\nb,neg\nc,pos\n")
    dev.write_text("text,label\nd,pos\ne,pos\nf,neg\ng,pos\n")
    raw = {
        "tasks": [
            {"name": "mine", "type": "file", "train": str(train), "eval": str(dev)},
            "rte",
        ],
        "data": {"dir": str(tmp_path / "no-data-here")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["tasks", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    mine = next(line for line in lines if line.startswith("mine "))
    assert mine.split()[:6] == ["mine", "classification", "3", "4", "majority", "0.750"]
    assert f"own file {dev}" in mine
    rte = next(line for line in lines if line.startswith("rte "))
    assert rte.split()[1:4] == ["?", "?", "?"] and "unreadable: " in rte


def test_method_listing_keys_are_the_config_dataclass_fields():
    for name, method in METHODS.items():
        fields = {f.name for f in dataclasses.fields(method.config_cls)} - {"name"}
        listed = next(p for p in registry_plugins(METHODS) if p.name == name).keys
        assert set(listed) == fields, name
