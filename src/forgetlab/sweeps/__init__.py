"""`forgetlab sweep`: many trials of one study on Optuna (see docs/sweeps.md).

spec: the `sweep:` section and its grid; trial: one trial's config and run; study: Optuna
storage and sampler; workers: the processes that pull trials; ray_backend: the trials as Ray
tasks instead (`--backend ray`); launch: `run_sweep`; result: `SweepResult`.
"""
