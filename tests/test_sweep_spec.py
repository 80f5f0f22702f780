"""The sweep: section without training: grid expansion, per-arm spaces, seeds, and every bad
input as one clear line before anything runs (and nothing of an earlier sweep lost)."""

from __future__ import annotations

import optuna
import pytest

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.sweeps.launch import run_sweep
from forgetlab.sweeps.spec import parse_sweep
from forgetlab.sweeps.trial import load_sweep_config


def sweep_raw(tmp_path, **sweep) -> dict:
    return {
        "name": "s",
        "tasks": ["rte", "sst2"],
        "method": {"name": "lora"},
        "output": {"dir": str(tmp_path / "sweep"), "store": str(tmp_path / "store.sqlite")},
        "sweep": {"space": {"training.lr": [1.0e-4, 1.0e-3]}, **sweep},
    }


def test_four_per_decade_from_1e5_to_1e2_is_13_log_spaced_points():
    spec = parse_sweep({"space": {"training.lr": {"log": [1.0e-5, 1.0e-2], "per_decade": 4}}})
    lrs = [p.params["training.lr"] for p in spec.grid()]
    assert len(lrs) == 13 and lrs[0] == 1e-5 and lrs[4] == 1e-4 and lrs[-1] == 1e-2
    assert lrs[1] == 1.78e-5  # 10^-4.75, to three significant digits
    # The study's 12 rates ~1e-5 ... ~6e-3: a top that is not on the lattice is not passed.
    short = parse_sweep({"space": {"training.lr": {"log": [1.0e-5, 6.0e-3], "per_decade": 4}}})
    assert [p.params["training.lr"] for p in short.grid()][-1] == 5.62e-3
    assert len(short.grid()) == 12


def test_per_method_spaces_replace_add_and_drop_axes():
    spec = parse_sweep(
        {
            "methods": ["full", "lora"],
            "space": {
                "training.lr": {"log": [1.0e-4, 1.0e-2], "per_decade": 1},
                "method.r": [8, 64],
            },
            "per_method": {"full": {"training.lr": [1.0e-5, 3.0e-5], "method.r": None}},
        }
    )
    points = spec.grid()
    full = [p for p in points if p.arm == "full"]
    lora = [p for p in points if p.arm == "lora"]
    assert [p.params for p in full] == [{"training.lr": 1e-5}, {"training.lr": 3e-5}]
    assert len(lora) == 3 * 2 and {p.params["method.r"] for p in lora} == {8, 64}
    assert full[0].overrides == ["method.name=full", "training.lr=1e-05"]
    names = [p.name for p in points]
    assert len(set(names)) == len(names) and names[0] == "000-full-lr=1e-05"


def test_every_point_runs_every_seed_of_the_sweep(tmp_path):
    sweep = load_sweep_config(raw={**sweep_raw(tmp_path, seeds=[3, 1, 2]), "seeds": [9]})
    for point in sweep.spec.grid():
        config = sweep.point_config(point, tmp_path / point.name, "store")
        assert config.seeds == [3, 1, 2]  # the same seeds, in the same order, at every point
        assert config.output.dir == str(tmp_path / point.name)
    assert {sweep.point_config(p, tmp_path, "s").training.lr for p in sweep.spec.grid()} == {
        1e-4,
        1e-3,
    }


def test_variants_are_arms_and_a_yaml11_exponent_is_a_number(tmp_path):
    raw = sweep_raw(tmp_path, variants=[{"name": "ewc", "overrides": ["regularizer.name=ewc"]}])
    raw["sweep"]["space"] = {"training.lr": ["1e-3"]}  # how YAML 1.1 reads `1e-3`
    sweep = load_sweep_config(raw=raw)
    (point,) = sweep.spec.grid()
    config = sweep.point_config(point, tmp_path, "s")
    assert point.arm == "ewc" and config.regularizer["name"] == "ewc"
    assert config.training.lr == 1e-3


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"space": {"training.lr_rate": [1.0]}}, r"unknown key config\.training\.lr_rate"),
        ({"space": {"method.rank": [8]}}, r"sweep point .*rank"),
        ({"space": {"training.lr": []}}, r"sweep\.space\.training\.lr is an empty list"),
        ({"space": {"training.lr": {"log": [1.0e-2, 1.0e-4]}}}, r"low=0\.01 must be below"),
        ({"space": {"training.lr": {"log": [1.0e-3, 1.0e-3]}}}, r"must be below high"),
        ({"space": {"training.lr": {"lin": [1, 2]}}}, r"unknown key 'lin'"),
        ({"objectives": ["accuracy"]}, r"'accuracy' is not a metric"),
        ({"objectives": ["source_loss"]}, r"source_loss needs probes"),
        ({"pruner": "median"}, r"Optuna cannot prune a multi-objective study.*prune_on"),
        ({"pruner": "median", "prune_on": "bwt"}, r"prune_on='bwt' is not one of"),
        ({"pruner": "hyperband", "prune_on": "forgetting"}, r"watches learning on the eval"),
        ({"pruner": "median", "prune_on": "learning"}, r"prunes on the eval\.every curve"),
        ({"sampler": "tpe"}, r"needs sweep\.trials"),
        ({"per_method": {"dora": {}}}, r"per_method\.dora is not an arm"),
        ({"bogus": 1}, r"unknown key sweep\.bogus"),
        ({"space": {"output.dir": ["x"]}}, r"the sweep sets this key itself"),
    ],
)
def test_bad_sweep_input_is_one_clear_line(tmp_path, sweep, message):
    raw = sweep_raw(tmp_path)
    raw["sweep"].update(sweep)
    with pytest.raises(ConfigError, match=message) as e:
        load_sweep_config(raw=raw)
    assert "\n" not in str(e.value)


def test_zero_workers_and_a_storage_that_cannot_connect_refuse_before_any_trial(tmp_path):
    raw = sweep_raw(tmp_path)
    with pytest.raises(ConfigError, match=r"--workers must be a whole number >= 1, got 0"):
        run_sweep(load_sweep_config(raw=raw), workers=0)
    url = "postgresql+psycopg://u:pw@127.0.0.1:9/db?connect_timeout=3"
    with pytest.raises(ForgetlabError, match=r"cannot connect to storage .*127\.0\.0\.1:9") as e:
        run_sweep(load_sweep_config(raw=raw), storage=url)
    assert "pw" not in str(e.value).replace("psycopg", "")
    assert not (tmp_path / "sweep" / "trials").exists()


def _seed_study(tmp_path, raw) -> optuna.Study:
    """A study as an earlier sweep left it (one finished trial), without training."""
    from forgetlab.sweeps import study as studies

    sweep = load_sweep_config(raw=raw)
    points = sweep.spec.grid()
    rdb = studies.open_storage(studies.default_storage(sweep.out), sweep.spec)
    mark = studies.fingerprint(sweep.spec, points, sweep.raw)
    study = studies.open_study(rdb, "s", sweep.spec, points, mark, resume=False)
    study.add_trial(
        optuna.create_trial(
            params={"point": points[0].name},
            distributions={"point": optuna.distributions.CategoricalDistribution(
                [p.name for p in points])},
            values=[0.5, 0.1],
        )
    )  # fmt: skip
    (sweep.out / "sweep.yaml").write_text("earlier sweep\n")
    return study


def test_a_study_reused_is_refused_without_resume_and_with_another_space(tmp_path):
    raw = sweep_raw(tmp_path)
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    _seed_study(tmp_path, raw)
    with pytest.raises(ForgetlabError, match=r"already holds a sweep: use --resume"):
        run_sweep(load_sweep_config(raw=raw))
    (sweep_dir / "sweep.yaml").unlink()  # the study alone (e.g. on a shared server) also says it
    with pytest.raises(ForgetlabError, match=r"study 's' already exists .*use --resume"):
        run_sweep(load_sweep_config(raw=raw))
    other = sweep_raw(tmp_path)
    other["sweep"]["space"] = {"training.lr": [1.0e-4, 3.0e-3]}
    with pytest.raises(ForgetlabError, match=r"different sweep: the space differs .*refused"):
        run_sweep(load_sweep_config(raw=other), resume=True)
    other = sweep_raw(tmp_path)
    other["training"] = {"epochs": 7}
    with pytest.raises(ForgetlabError, match=r"different sweep: the run config differs"):
        run_sweep(load_sweep_config(raw=other), resume=True)
    # Nothing lost: the earlier trial is still in the study, no trial directory was started.
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{sweep_dir / 'optuna.sqlite'}")
    assert [t.values for t in study.trials] == [[0.5, 0.1]]
    assert not (sweep_dir / "trials").exists()


def test_resume_without_a_study_says_so(tmp_path):
    with pytest.raises(ForgetlabError, match=r"cannot resume: no study 's'"):
        run_sweep(load_sweep_config(raw=sweep_raw(tmp_path)), resume=True)


def test_a_one_thread_worker_is_pinned_with_a_passive_wait_policy(monkeypatch):
    from forgetlab import threads
    from forgetlab.sweeps.workers import worker_env

    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the caller's shell: the sweep's share wins
    env = worker_env(1)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["FORGETLAB_TORCH_THREADS"] == "1"
    assert not threads.governed(env)


@pytest.mark.parametrize(
    ("setting", "workers", "threads"),
    [(None, 1, 4), ("auto", 2, 2), (None, 3, 1), ("1", 1, 1), ("3", 2, 3), ("passive", 1, 4)],
)
def test_workers_get_their_share_of_the_cores_or_the_users_own_thread_count(
    monkeypatch, setting, workers, threads
):
    from forgetlab.sweeps import workers as w

    monkeypatch.setattr(w, "cores", lambda: 4)
    env = {} if setting is None else {"FORGETLAB_THREADS": setting}
    assert w.worker_threads(workers, env) == threads


def test_a_worker_of_several_threads_is_governed_as_a_lone_run_up_to_its_share(monkeypatch):
    """Pinned and passive, a 2-thread worker trained 1.7x slower than a lone run (see
    worker_env): it gets the governor, capped at its share, and no thread count of the
    caller's shell."""
    from forgetlab import threads
    from forgetlab.sweeps.workers import worker_env

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("FORGETLAB_THREADS", raising=False)
    env = worker_env(3)
    assert env["FORGETLAB_TORCH_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in env and "MKL_NUM_THREADS" not in env
    assert "OMP_WAIT_POLICY" not in env and threads.governed(env)
    monkeypatch.setenv("FORGETLAB_THREADS", "passive")  # the user's own choice is kept
    assert worker_env(3)["FORGETLAB_THREADS"] == "passive" and not threads.governed(worker_env(3))
