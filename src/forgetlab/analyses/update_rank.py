"""The rank of the weight update: ΔW = W_after_stage − W_pretrained for every linear layer of
the backbone (LoRA and its variants merged, so every method is measured the same way), its
singular values, and the rank that explains `energy` (90%) of ‖ΔW‖²_F beside that of a random
matrix of the same shape and norm. Full fine-tuning's updates need 10-100× LoRA's rank.
"""

from __future__ import annotations

import numpy as np

from forgetlab.analyses.runs import OpenRun
from forgetlab.analyses.spectrum import effective_linear_weights, matrix_spectrum, weight_deltas
from forgetlab.errors import ForgetlabError

NAME = "spectrum"
DEFAULTS = {"energy": 0.9}


def check(run: OpenRun, seed: int, params: dict) -> None:
    if not 0 < params["energy"] <= 1:
        raise ForgetlabError(f"energy={params['energy']} must be in (0, 1]")
    # The final stage is required (it is what the report shows); earlier ones when kept.
    run.require_checkpoints(seed, [len(run.tasks)], "the update spectrum")


def compute(run: OpenRun, seed: int, params: dict) -> dict:
    base = effective_linear_weights(run.pretrained_backbone())
    stages = []
    for stage in range(1, len(run.tasks) + 1):
        if not run.checkpoint(seed, stage).is_dir():
            continue  # output.checkpoints=last keeps only the final stage
        tuned = effective_linear_weights(run.model_at(seed, stage).backbone)
        deltas = weight_deltas(base, tuned)
        matrices = [
            matrix_spectrum(name, d, energy=params["energy"], seed=seed)
            for name, d in deltas.items()
            if bool(d.abs().max() > 0)  # untouched layers (frozen, not targeted) have no rank
        ]
        ranks = [m["rank90"] for m in matrices]
        stages.append(
            {
                "stage": stage,
                "task": run.tasks[stage - 1].name,
                "n_unchanged": len(deltas) - len(matrices),
                "median_rank90": float(np.median(ranks)) if ranks else 0.0,
                "median_random_rank90": (
                    float(np.median([m["random_rank90"] for m in matrices])) if matrices else 0.0
                ),
                "matrices": matrices,
            }
        )
    return {"seed": seed, "energy": params["energy"], "stages": stages}
