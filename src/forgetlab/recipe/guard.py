"""The forgetting budget (`guard:`): score the watched tasks and probes while a stage trains,
and end the stage when they have lost more than `max_loss`.

What a watched name's loss is, at a check of stage s (scores are higher-is-better for every
kind: accuracy, −NLL per token, exact match, pass@1; so a loss is a drop, an NLL rise):

- a task j of the sequence, only in the stages after its own (s > j): R[j][j] − its score
  now, the metrics' `forgetting` of task j measured at this point. In its own stage and
  before, it is not watched;
- a probe: its base-model score R[0] − its score now, the change behind the metrics'
  `source_loss` (which is the mean of those drops over the probes the base model passes);
- a source task: its score on the base model (with its fixed linear-probe head, scored once
  when stage 1 starts) − its score now.

The stage's loss is the mean of the watched losses (`reduce: mean`, as `source_loss` and
`avg_forgetting` average) or their max. The guard checks at step 0 (the stage's start: the
previous row's scores, plus the source tasks scored anew), every `every` optimizer steps and at
the stage's last step. The first check whose loss exceeds `max_loss` ends the stage: `stop`
keeps the weights as they are; `rollback` first restores the trainable parameters and the heads
saved at the last check within budget (step 0 when none was). A stage that starts over budget
trains no step. Every check, and the crossing, land in state["guard"]["stages"]; the row after
the stage is the ordinary evaluation row, so what was learned up to there is read from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from forgetlab.config import GuardConfig
from forgetlab.errors import ForgetlabError
from forgetlab.recipe.prepare import PreparedTask, RunTasks

log = logging.getLogger("forgetlab")

# scores these tasks with the model as it is: one cell each, as recipe.evaluate.eval_row
Scorer = Callable[[list[PreparedTask]], list[dict]]


class StageGuard:
    """The guard of one stage, called as train_stage's `on_step(step, total_steps)`: True
    ends the stage. `score` scores the watched tasks with `model` as it is (eval_row);
    `eval_s` counts the seconds spent in it."""

    def __init__(
        self,
        cfg: GuardConfig,
        state: dict,
        stage: int,
        model: nn.Module,
        run_tasks: RunTasks,
        score: Scorer,
    ) -> None:
        self.cfg, self.state, self.stage, self.model, self.score = cfg, state, stage, model, score
        self.eval_s = 0.0
        self.saved: dict[str, torch.Tensor] = {}
        self.saved_step: int | None = None
        tasks, probes, sources = run_tasks.tasks, run_tasks.probes, run_tasks.sources
        T = len(tasks)
        watch = set(self.cfg.watch)
        # where each watched name's score sits in a row (None: a source task, not in rows)
        self.watched: list[tuple[PreparedTask, int | None]] = [
            *((t, j) for j, t in enumerate(tasks[: stage - 1]) if t.name in watch),
            *((p, T + k) for k, p in enumerate(probes) if p.name in watch),
            *((s, None) for s in sources if s.name in watch),
        ]
        guard_state = state.setdefault("guard", {"source_reference": {}, "stages": []})
        # a resumed stage starts its record again
        guard_state["stages"] = [r for r in guard_state["stages"] if r["stage"] != stage]
        self.record: dict = {
            "stage": stage,
            "task": tasks[stage - 1].name,
            "action": self.cfg.action,
            "max_loss": self.cfg.max_loss,
            "watched": [t.name for t, _ in self.watched],
            "reference": self._references(T),
            "checks": [],  # {step, loss, scores}
            "crossed": None,  # the first check over budget: {step, loss, scores, losses}
            "kept_step": None,  # the step whose weights the stage ends with, after a crossing
        }
        guard_state["stages"].append(self.record)

    def _references(self, T: int) -> dict[str, float]:
        rows, refs = self.state["rows"], {}
        sources = self.state["guard"]["source_reference"]
        for task, col in self.watched:
            if col is None and task.name not in sources:
                if self.stage > 1:
                    raise ForgetlabError(
                        f"guard: no base-model score of source task {task.name} in state.json "
                        "(it is scored when stage 1 starts)"
                    )
                continue  # scored at step 0 on the base model
            if col is None:
                refs[task.name] = sources[task.name]
            else:  # a task of the sequence: the row after its own stage; a probe: the base row
                refs[task.name] = rows[col + 1 if col < T else 0][col]["score"]
        return refs

    def __call__(self, step: int, total_steps: int) -> bool:
        checked = step == 0 or step % self.cfg.every == 0 or step == total_steps
        if not self.watched or not checked:
            return False
        scores = self._scores(step)
        if step == 0 and self.stage == 1:
            for task, col in self.watched:
                if col is None:  # the base model's score of a source task
                    self.state["guard"]["source_reference"][task.name] = scores[task.name]
                    self.record["reference"][task.name] = scores[task.name]
        ref = self.record["reference"]
        losses = {name: ref[name] - score for name, score in scores.items()}
        values = list(losses.values())
        loss = max(values) if self.cfg.reduce == "max" else sum(values) / len(values)
        self.record["checks"].append({"step": step, "loss": loss, "scores": scores})
        if loss <= self.cfg.max_loss:
            self._save()
            self.saved_step = step
            return False
        self.record["crossed"] = {
            "step": step,
            "total_steps": total_steps,
            "loss": loss,
            "scores": scores,
            "losses": losses,
        }
        kept = step
        if self.cfg.action == "rollback" and self.saved_step is not None:
            self._restore()
            kept = self.saved_step
        self.record["kept_step"] = kept
        log.warning(
            "seed %d stage %d: guard loss %.4f > max_loss %g at step %d/%d (%s); %s",
            self.state["seed"], self.stage, loss, self.cfg.max_loss, step, total_steps,
            ", ".join(f"{n} {v:+.4f}" for n, v in losses.items()),
            f"rolled back to step {kept}" if kept != step else "stage stopped",
        )  # fmt: skip
        return True

    def _scores(self, step: int) -> dict[str, float]:
        """The watched scores: at step 0 the previous row's (the same weights), else scored."""
        previous = self.state["rows"][-1]
        todo = [t for t, col in self.watched if step > 0 or col is None]
        start = time.perf_counter()
        row = self.score(todo) if todo else []
        self.eval_s += time.perf_counter() - start
        scored = {t.name: cell["score"] for t, cell in zip(todo, row)}
        return {
            t.name: scored[t.name] if t.name in scored else previous[col]["score"]
            for t, col in self.watched
        }

    def _kept(self):
        """What a rollback restores: the trainable parameters and every head."""
        for name, p in self.model.named_parameters():
            if p.requires_grad or name.startswith("heads."):
                yield name, p

    @torch.no_grad()
    def _save(self) -> None:
        for name, p in self._kept():
            if name in self.saved:
                self.saved[name].copy_(p)
            else:
                self.saved[name] = p.detach().clone()

    @torch.no_grad()
    def _restore(self) -> None:
        for name, p in self._kept():
            p.copy_(self.saved[name])


def crossings(guard_state: dict | None) -> list[dict]:
    """The stages the guard ended early, one line each: {stage, task, step, total_steps,
    loss, max_loss, action, kept_step, losses}."""
    out = []
    for record in (guard_state or {}).get("stages", []):
        crossed = record["crossed"]
        if crossed is not None:
            out.append({
                "stage": record["stage"], "task": record["task"], "step": crossed["step"],
                "total_steps": crossed["total_steps"], "loss": crossed["loss"],
                "max_loss": record["max_loss"], "action": record["action"],
                "kept_step": record["kept_step"], "losses": crossed["losses"],
            })  # fmt: skip
    return out
