"""The analysis registry: every registered analysis declares its command-line switch (or has
its own command), its options, a text formatter and a report figure, and the CLI and the
report are generated from it. A new analysis is one module, one registry line and one row
in RESULTS below."""

from __future__ import annotations

import ast
import copy
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from report_fixtures import DIVERSITY, _cka, _hessian, _similarity, _spectrum

import forgetlab
from forgetlab.analyses import ANALYSES, BY_NAME, HESSIAN, REGISTRY, format_analysis
from forgetlab.analyses.spec import FigureContext
from forgetlab.cli import main

TASKS = ["rte", "sst2", "mrpc"]


def _with_iterations(result: dict) -> dict:
    result = copy.deepcopy(result)
    for r in result["results"]:  # what `compute` writes beside the history
        r["iterations"] = len(r["history"])
    return result


# One result per registered analysis, shaped as its `compute` writes it.
RESULTS = {
    "cka": _cka(TASKS, 0.25),
    "spectrum": _spectrum(TASKS, 20, 0),
    "similarity": _similarity(TASKS),
    "diversity": {**DIVERSITY, "max_new_tokens": 128},
    "hessian": _with_iterations(_hessian(1, "rte", "modules", 2.0)),
}
SRC = Path(forgetlab.__file__).parent


def test_every_registered_analysis_has_a_row():
    assert sorted(RESULTS) == sorted(m.NAME for m in REGISTRY)
    assert len(BY_NAME) == len(REGISTRY)  # names are unique


@pytest.mark.parametrize("name", list(RESULTS))
def test_analysis_declares_its_parts(name):
    module = BY_NAME[name]
    assert callable(module.check) and callable(module.compute)
    assert isinstance(module.DEFAULTS, dict)
    assert module.FLAG is None or (isinstance(module.FLAG, str) and module.FLAG)
    assert all(option.key in module.DEFAULTS for option in module.CLI)
    assert isinstance(module.REPORT_ORDER, int)
    lines = module.format_text(RESULTS[name])
    assert lines and all(isinstance(line, str) for line in lines)
    assert format_analysis(RESULTS[name]) == "\n".join(lines)
    fig = module.figure(RESULTS[name], FigureContext("run <1>", name, True))
    assert fig.alt and fig.caption
    assert fig.png.startswith(b"\x89PNG\r\n\x1a\n")


def test_report_orders_are_distinct():
    orders = [m.REPORT_ORDER for m in REGISTRY]
    assert len(set(orders)) == len(orders)


def test_shared_cli_options_agree():
    """`forgetlab analyze` has one --examples for cka and similarity: one type, one help."""
    seen = {}
    for module in ANALYSES.values():
        for o in module.CLI:
            spec = (o.type, o.help, o.metavar, o.choices)
            assert seen.setdefault(o.flag, spec) == spec, o.flag


def _help(command: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    return out.getvalue()


def test_cli_is_generated_from_the_registry():
    analyze = _help("analyze")
    assert HESSIAN.FLAG is None and HESSIAN.NAME not in ANALYSES
    for module in ANALYSES.values():
        assert f"--{module.NAME} " in analyze
        assert module.FLAG.split()[0] in analyze
        for option in module.CLI:
            assert f"{option.flag} " in analyze
    hessian = _help("hessian")
    for option in HESSIAN.CLI:
        assert f"{option.flag} " in hessian


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_layers_plotting_below_analyses_below_report():
    assert not any(m.startswith("forgetlab") for m in _imports(SRC / "plotting.py"))
    for path in (SRC / "analyses").rglob("*.py"):
        imports = _imports(path)
        assert not any(m.startswith("forgetlab.report") for m in imports), path
        if path.name != "__init__.py" or path.parent.name != "analyses":
            # only the registry imports the analysis modules; nothing imports it back
            assert not any(
                m in ("forgetlab.analyses", f"forgetlab.analyses.{n}")
                for m in imports
                for n in ("ANALYSES", "BY_NAME", "HESSIAN", "REGISTRY")
            ), path
    for path in (SRC / "analyses" / "maths").rglob("*.py"):
        imports = {m for m in _imports(path) if m.startswith("forgetlab")}
        assert imports <= {"forgetlab.errors", "forgetlab.errors.ForgetlabError"}, path


@pytest.mark.parametrize("package", ["analyses", "report"])
def test_no_import_cycle_inside_the_package(package):
    modules = {
        f"forgetlab.{package}." + ".".join(p.relative_to(SRC / package).with_suffix("").parts): p
        for p in (SRC / package).rglob("*.py")
        if p.name != "__init__.py"
    }
    graph = {m: {i for i in _imports(p) if i in modules} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for other in graph[module]:
                visit(other, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())
