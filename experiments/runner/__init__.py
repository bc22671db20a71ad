"""The runner: the library behind ``experiments/run.py`` (and the sampling, packing and
benchmark commands). One job per module, in the order a run goes through them:

    checks       every config value and input file, before any model work
    rundir       one writer per run directory: lock, ownership, summary.json
    build        process group, tokenizer, index shards, method and DiT
    checkpoint   what a checkpoint holds; when a relaunch may resume it
    train_loop   the training step and the loop (when to log, evaluate, checkpoint, stop)
    evaluation   the sampling protocol and metrics of in-training evaluations
    trainer      ``run``: the phases above, top to bottom
    config       the Hydra schema (experiments/conf/ holds the YAML)
    labels       the name a run's results (and its sweep folder) are grouped under
    tracking     TensorBoard and W&B, when ``logger=`` asks for them
    errors       the errors a run reports to the user
"""
