"""Stacked trials: K trials that differ only in values (learning rate, seed, warm-up, weight
decay) train as one batched model in one process, each ending with the numbers it has alone.

`layers.py` turns K prepared models into one (`stack_models`), `optimizer.py` is AdamW per
trial over the stacked tensors, `train.py` trains one stage of every trial, `run.py` runs K
configs and writes K ordinary run directories.
"""
