"""`forgetlab sweep --backend ray`: the same trials as Ray tasks on a local Ray with 2 CPU
workers (the same run directories, store rows and objective values as worker processes),
`sweep.resources` checked before anything runs, and one line where ray is not installed."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml

import forgetlab
from forgetlab.cli import main
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.store import ResultsStore
from forgetlab.sweeps import workers
from forgetlab.sweeps.launch import run_sweep
from forgetlab.sweeps.ray_backend import MISSING, trials_at_once
from forgetlab.sweeps.spec import Resources, parse_sweep
from tests.conftest import needs_data, tiny_sweep_raw

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install forgetlab[ray], or the dev extra)",
)


def tiny_sweep(out: Path, lrs: list[float], **sweep) -> Path:
    """conftest's tiny sweep over `lrs`, `sweep` keys added, written to a file."""
    raw = tiny_sweep_raw(out, lrs)
    raw["sweep"].update(sweep)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- sweep.resources --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": 0}, "sweep.resources.cpu must be > 0, got 0"),
        ({"cpu": -1}, "sweep.resources.cpu must be > 0"),
        ({"cpu": float("nan")}, "sweep.resources.cpu must be a finite number"),
        ({"gpu": float("inf")}, "sweep.resources.gpu must be a finite number"),
        ({"gpu": -0.25}, "sweep.resources.gpu must be >= 0"),
        ({"gpu": 1.5}, "a fraction of one GPU (<= 1) or a whole number of GPUs"),
        ({"gpu": "a quarter"}, "sweep.resources.gpu must be a number"),
        ({"gpu": True}, "sweep.resources.gpu must be a number"),
        ({"tpu": 1}, "unknown key sweep.resources.tpu (valid keys: cpu, gpu)"),
        (4, "sweep.resources must be a mapping"),
    ],
)
def test_bad_resources_are_one_line_before_anything_runs(resources, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse_sweep({"space": {"training.lr": [1e-3]}, "resources": resources})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("resources", "cpu", "gpu", "threads"),
    [
        ({}, 1.0, 0.0, 1),
        ({"cpu": 2, "gpu": 0.25}, 2.0, 0.25, 2),
        ({"cpu": 0.5}, 0.5, 0.0, 1),  # a fraction of a CPU still gets one torch thread
        ({"cpu": 1, "gpu": 2}, 1.0, 2.0, 1),
        ({"gpu": "1e-1"}, 1.0, 0.1, 1),  # YAML 1.1 reads 1e-1 as a string
    ],
)
def test_good_resources_and_the_torch_threads_they_give(resources, cpu, gpu, threads):
    spec = parse_sweep({"space": {"training.lr": [1e-3]}, "resources": resources})
    assert (spec.resources.cpu, spec.resources.gpu, spec.resources.threads) == (cpu, gpu, threads)


def node(cpu: float, gpu: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


@pytest.mark.parametrize(
    ("nodes", "resources", "fits"),
    [
        ([node(2)], Resources(cpu=1), 2),
        ([node(2), node(3)], Resources(cpu=2), 2),  # per node: 1 + 1, not 5 // 2
        ([node(16, gpu=1)], Resources(cpu=1, gpu=0.25), 4),  # four trials share the GPU
        ([node(2, gpu=1)], Resources(cpu=1, gpu=0.25), 2),  # the CPUs bound it
        ([node(8, gpu=4)], Resources(cpu=1, gpu=2), 2),
        ([node(2), node(64, alive=False)], Resources(cpu=1), 2),
    ],
)
def test_trials_at_once_is_what_the_live_nodes_hold(nodes, resources, fits):
    assert trials_at_once(nodes, resources) == fits


def test_a_gpu_request_without_a_gpu_is_one_clear_line_not_a_hang():
    with pytest.raises(ConfigError, match=r"sweep.resources.gpu=0.25: the Ray cluster has no GPU"):
        trials_at_once([node(2)], Resources(cpu=1, gpu=0.25))
    with pytest.raises(ConfigError, match=r"no Ray node has that much \(the largest: 2 CPU"):
        trials_at_once([node(2), node(1)], Resources(cpu=4))


# --- without ray ------------------------------------------------------------------------


@needs_data
def test_without_ray_the_ray_backend_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "sweep"
    config = tiny_sweep(out, [1e-3])
    with pytest.raises(ForgetlabError) as e:
        run_sweep(config, backend="ray")
    assert str(e.value) == "ray is not installed: pip install forgetlab[ray]"
    assert main(["sweep", str(config), "--backend", "ray"]) == 2
    assert capsys.readouterr().err == f"forgetlab: error: {MISSING}\n"
    assert not out.exists()


def test_only_the_ray_backend_imports_ray_and_only_when_asked_for():
    """The default backend never loads ray: no module but ray_backend imports it, and
    ray_backend is imported inside functions only (its importers run it for --backend ray)."""
    src = Path(forgetlab.__file__).parent
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = set(tree.body)
        for stmt in ast.walk(tree):
            if isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                names = [stmt.module or ""]
            else:
                continue
            where = path.relative_to(src)
            if any(n == "ray" or n.startswith("ray.") for n in names):
                assert path.name == "ray_backend.py" and stmt not in top, where
            if "forgetlab.sweeps.ray_backend" in names:
                assert stmt not in top, f"{where} imports ray_backend at module level"


@needs_data
def test_backend_and_ray_address_are_checked(tmp_path):
    config = tiny_sweep(tmp_path / "sweep", [1e-3])
    with pytest.raises(ConfigError, match="--backend must be one of processes, ray"):
        run_sweep(config, backend="dask")
    with pytest.raises(ConfigError, match="--ray-address is for --backend ray"):
        run_sweep(config, ray_address="auto")


# --- on Ray -----------------------------------------------------------------------------


def _trials(result) -> dict[str, tuple]:
    """Each finished trial by point: its run directory's name and its objective values."""
    return {t.point: (Path(t.run_dir).name, t.values) for t in result.complete}


def _matrix(run_dir: Path) -> list:
    return json.loads((run_dir / "metrics.json").read_text())["accuracy_matrix"]


@needs_ray
@needs_data
def test_one_point_on_a_local_ray_started_and_stopped_by_the_sweep(tmp_path):
    import ray

    out = tmp_path / "ray"
    result = run_sweep(tiny_sweep(out, [2e-3], objectives=["learning"]), backend="ray")
    assert not ray.is_initialized()  # the sweep's own Ray is shut down at the end
    assert result.worker_exits == [0] * len(result.worker_exits) and result.missing == 0
    (trial,) = result.complete
    run_dir = Path(trial.run_dir)
    assert run_dir.parent == (out / "trials").resolve()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seeds"] == [1, 2]
    assert trial.values == [pytest.approx(metrics["aggregate"]["initial_acc"]["mean"])]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.sqlite'}")
    attrs = study.trials[trial.number].user_attrs
    assert attrs["backend"] == "ray" and attrs["torch_threads"] == 1  # cpu: 1 -> one thread
    stored = {r["run_dir"] for r in ResultsStore(tmp_path / "store.sqlite").runs()}
    assert stored == {str(run_dir)}
    assert json.loads((out / "sweep.json").read_text())["trials"][0]["state"] == "COMPLETE"


def _ray_temp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("forgetlab-ray-*"))


@needs_ray
@needs_data
def test_a_gpu_request_without_a_gpu_stops_the_sweep_before_it_writes_and_shuts_ray_down(
    tmp_path,
):
    import ray

    before = _ray_temp_dirs()
    config = tiny_sweep(tmp_path / "ray", [1e-3])
    with pytest.raises(ConfigError, match=r"^sweep.resources.gpu=0.25: the Ray cluster has no"):
        run_sweep(config, ["sweep.resources.gpu=0.25"], backend="ray")
    assert not ray.is_initialized() and _ray_temp_dirs() == before
    assert not (tmp_path / "ray").exists()  # refused before anything was written


@pytest.mark.slow
@needs_ray
@needs_data
def test_ctrl_c_cancels_the_ray_trials_shuts_ray_down_and_resume_finishes(tmp_path, monkeypatch):
    import ray

    before = _ray_temp_dirs()
    out = tmp_path / "ray"
    config = tiny_sweep(out, [1e-3], objectives=["learning"])
    real_wait = ray.wait

    def interrupted(refs, **kwargs):  # Ctrl-C once a trial is under way
        while not list((out / "trials").glob("*/seed-*/state.json")):
            ready, _ = real_wait(refs, timeout=0.2)
            assert not ready, "the trial ended before it could be interrupted"
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ray, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(config, backend="ray")
    assert not ray.is_initialized() and _ray_temp_dirs() == before
    resumed = run_sweep(config, backend="ray", resume=True)
    (done,) = resumed.complete
    (failed,) = [t for t in resumed.trials if t.state == "FAIL"]  # the cancelled trial ...
    assert done.retry_of == failed.number and done.point == failed.point  # ... retried


@pytest.mark.slow
@needs_ray
@needs_data
def test_two_points_on_ray_with_2_cpus_equal_the_default_backend(tmp_path, monkeypatch):
    import ray

    lrs = [1e-3, 4e-3]
    # Worker processes with one torch thread each, as the Ray trials (cpu: 1) have.
    monkeypatch.setattr(workers, "cores", lambda: 2)
    default = run_sweep(tiny_sweep(tmp_path / "processes" / "sweep", lrs), workers=2)
    temp = tempfile.mkdtemp(prefix="fl-ray-")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp)
    try:
        config = tiny_sweep(tmp_path / "ray" / "sweep", lrs)
        on_ray = run_sweep(config, backend="ray")
        assert ray.is_initialized()  # the caller's Ray is left running
        again = run_sweep(config, backend="ray", resume=True)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert len(on_ray.complete) == 2 and on_ray.worker_exits == [0, 0]  # 2 lanes: 2 CPUs
    assert _trials(on_ray) == _trials(default)
    for run_dir in on_ray.run_dirs:
        assert _matrix(run_dir) == _matrix(default.sweep_dir / "trials" / run_dir.name)
    stored = {r["run_dir"] for r in ResultsStore(tmp_path / "ray" / "store.sqlite").runs()}
    assert stored == {str(d) for d in on_ray.run_dirs}
    assert (on_ray.sweep_dir / "answers.json").is_file()
    # --resume on Ray: nothing is left, so nothing runs again, and the result is the same.
    assert _trials(again) == _trials(on_ray) and len(again.trials) == 2
