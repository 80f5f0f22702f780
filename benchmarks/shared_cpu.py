"""A shared CPU: examples/s of 1, 2 and 3 forgetlab trainings running at once, with
torch's defaults (FORGETLAB_THREADS=torch: spin-waiting threads), forgetlab's choice (the
thread governor, forgetlab.thread_governor) and an always-passive wait policy
(FORGETLAB_THREADS=passive), and alone.

Each run is its own process (as two configs at once, sweep workers, or the test suite beside
a run are). The K processes of one setting start together: they import and load MiniLM and
a task at the same time, wait until all are loaded, then each trains LoRA (or full) with
batch 16 for `--seconds` of wall time and reports its examples/s. The table gives each
setting's per-process examples/s (median over processes and repeats), its ratio to the same
setting alone and to torch's defaults alone (fair share: 1/K of alone).

"Company later": one run trains alone, then `--later` more runs of the same setting start
beside it (their loading included) and train `--seconds`; the first keeps going a few
seconds after they end. Its examples/s alone before, beside them, and alone after, and
theirs beside it, show the governor lowering the threads and raising them again.

    python benchmarks/shared_cpu.py [--method lora|full] [--seconds 15] [--repeats 1]
                                    [--concurrent 1,2,3] [--later 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "torch defaults": {"FORGETLAB_THREADS": "torch"},
    "forgetlab": {},
    "always passive": {"FORGETLAB_THREADS": "passive"},
}
AFTER_S = 6.0  # the first run of "company later" trains this long alone after the others end


def worker(method: str, seconds: float, stop_file: str | None) -> None:
    """One training process: untimed setup, "ready" on stdout, then, on "go" from stdin,
    training until `seconds` have passed (or `stop_file` exists); prints JSON: the wall
    times of its steps and torch's threads at each."""
    # forgetlab first: importing it applies forgetlab.threads before torch loads
    # isort: off
    import forgetlab  # noqa: F401
    import torch

    # isort: on

    sys.path.insert(0, str(HERE))
    from common import quiet

    from forgetlab.methods import get_method, method_config
    from forgetlab.models import load_tokenizer
    from forgetlab.recipe.build import build_model
    from forgetlab.recipe.prepare import prepare_tasks
    from forgetlab.recipe.train import make_accelerator, train_stage
    from forgetlab.resolve import load_config

    quiet()
    lr = 5e-4 if method == "lora" else 2e-5
    config = load_config(
        raw={
            "tasks": ["sst2"],
            "data": {"max_train_examples": 800, "max_eval_examples": 16},
            "method": {"name": method},
            "training": {"lr": lr, "epochs": 100, "batch_size": 16, "progress_bar": False,
                         "mixed_precision": "bf16", "log_every": 100000},
        }
    )  # fmt: skip
    tokenizer = load_tokenizer(config.model)
    tasks = prepare_tasks(config, tokenizer)
    accelerator = make_accelerator(config.training)
    m, mcfg = get_method(method), method_config(config.method)
    model = build_model(config, tasks, m, mcfg, seed=1, pad_id=0, device=accelerator.device)
    t = tasks[0]
    args = (m, mcfg, t.name, t.kind, t.train, config.training, accelerator)
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    go = time.time()
    steps: list[tuple[float, int, int]] = []  # (wall time, step, threads after it)

    def on_step(step: int, total: int) -> bool:
        steps.append((time.time(), step, torch.get_num_threads()))
        return time.time() - go >= seconds or bool(stop_file and os.path.exists(stop_file))

    train_stage(model, *args, seed=1, stage=1, pad_id=0, on_step=on_step)
    out = {"go": go, "steps": steps,
           "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(torch default)")}  # fmt: skip
    print(json.dumps(out), flush=True)


class Run:
    """One worker process of a setting."""

    def __init__(self, env_extra: dict, method: str, seconds: float, stop_file: str = ""):
        env = {**os.environ}
        for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT",
                    "FORGETLAB_THREADS"):  # fmt: skip
            env.pop(key, None)  # each setting decides these itself
        env.update(env_extra)
        cmd = [sys.executable, __file__, "--worker", "--method", method,
               "--seconds", str(seconds), "--stop-file", stop_file]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def wait_ready(self) -> None:
        for line in self.proc.stdout:  # a library may print first
            if line.strip() == "ready":
                return
        raise SystemExit(f"a worker failed before training (exit {self.proc.wait()})")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            raise SystemExit(f"a worker failed (exit {self.proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])


def rate(result: dict, start: float, end: float) -> float:
    """Examples/s (batch 16) of a worker between two wall times, from its step times."""
    marks = [(result["go"], 0)] + [(t, s) for t, s, _ in result["steps"]]
    inside = [(t, s) for t, s in marks if start <= t <= end]
    if len(inside) < 2:
        return float("nan")
    (t0, s0), (t1, s1) = inside[0], inside[-1]
    return 16 * (s1 - s0) / (t1 - t0)


def threads_seen(result: dict, start: float = 0.0, end: float = float("inf")) -> str:
    seen = sorted({n for t, _, n in result["steps"] if start <= t <= end})
    return "/".join(map(str, seen)) or "?"


def together(k: int, env: dict, method: str, seconds: float) -> list[dict]:
    runs = [Run(env, method, seconds) for _ in range(k)]
    for r in runs:
        r.wait_ready()
    for r in runs:
        r.go()
    return [r.result() for r in runs]


def company_later(later: int, env: dict, method: str, seconds: float) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        stop = f"{tmp}/stop"
        first = Run(env, method, 3600.0, stop)
        first.wait_ready()
        first.go()
        time.sleep(seconds / 2)  # alone
        joined = time.time()
        others = [Run(env, method, seconds) for _ in range(later)]
        for r in others:
            r.wait_ready()
        for r in others:
            r.go()
        got = [r.result() for r in others]
        ended = time.time()
        time.sleep(AFTER_S)
        Path(stop).touch()
        a = first.result()
    beside_start = max(g["go"] for g in got)
    beside_end = min(g["steps"][-1][0] for g in got)
    return {
        "alone before": rate(a, a["go"], joined),
        "beside": rate(a, beside_start, beside_end),
        "alone after": rate(a, ended + 2.0, ended + AFTER_S),  # the governor's looks first
        "newcomers beside": statistics.median(rate(g, g["go"], beside_end) for g in got),
        "threads": f"{threads_seen(a, 0, joined)} -> {threads_seen(a, beside_start, beside_end)}"
        f" -> {threads_seen(a, ended + 2.0)}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--seconds", type=float, default=15.0, help="training time of each run")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--concurrent", default="1,2,3")
    p.add_argument("--later", type=int, default=2, help="runs joining a lone one (0: none)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stop-file", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.method, args.seconds, args.stop_file or None)
        return
    counts = [int(k) for k in args.concurrent.split(",")]
    print(
        f"machine: {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; method "
        f"{args.method}, batch 16, {args.seconds:.0f} s of training per process, "
        f"{args.repeats} repeats; runs of one setting start together"
    )
    rates: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for k in counts:
            for name, env in SETTINGS.items():  # interleaved: drift hits every setting alike
                start = time.perf_counter()
                got = together(k, env, args.method, args.seconds)
                per = [rate(r, r["go"], r["steps"][-1][0]) for r in got]
                rates.setdefault((name, k), []).extend(per)
                print(f"  repeat {rep + 1} {name:15s} x{k}: "
                      + ", ".join(f"{x:.1f}" for x in per)
                      + f" ex/s per process (threads {threads_seen(got[0])}, "
                      f"{got[0]['wait_policy']}; {time.perf_counter() - start:.0f} s)",
                      flush=True)  # fmt: skip
    base = statistics.median(rates[("torch defaults", counts[0])])
    print(f"\n{'concurrent':>10} {'setting':>15} {'ex/s per process':>17} {'vs own alone':>13} "
          f"{'vs torch alone':>15} {'fair share':>11}")  # fmt: skip
    for k in counts:
        for name in SETTINGS:
            med = statistics.median(rates[(name, k)])
            alone = statistics.median(rates[(name, counts[0])])
            print(f"{k:>10} {name:>15} {med:>17.1f} {med / alone:>13.2f} "
                  f"{med / base:>15.2f} {counts[0] / k:>11.2f}")  # fmt: skip
    if args.later:
        print(f"\ncompany later: one run alone, then {args.later} more start beside it "
              f"(ex/s per process)")  # fmt: skip
        print(f"{'setting':>15} {'alone before':>13} {'beside':>8} {'alone after':>12} "
              f"{'newcomers':>10}  first run's threads")  # fmt: skip
        for name, env in SETTINGS.items():
            c = company_later(args.later, env, args.method, args.seconds)
            print(f"{name:>15} {c['alone before']:>13.1f} {c['beside']:>8.1f} "
                  f"{c['alone after']:>12.1f} {c['newcomers beside']:>10.1f}  {c['threads']}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
