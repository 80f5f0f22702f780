"""The recipe: what `forgetlab run` does, one module per step, in the order a run happens.

    prepare.py     the tasks: loaded, subsampled, encoded by their kind
    build.py       the model: backbone + heads, prepared by the method; stage checkpoints
    train.py       one training stage on one task
    evaluate.py    one row of the score matrix: every task and probe, scored
    guard.py       the forgetting budget (`guard:`): watched scores checked while a stage trains
    summary.py     metrics.json of a seed and of the run
    run.py         the loop over seeds and stages that calls the steps above

Start reading at run.py.
"""
