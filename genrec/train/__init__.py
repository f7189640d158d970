"""Training: examples and batches (`data`), the VSL loop (`loop`), checkpoints, DDP, `run_training`.

Import from the submodules; this package imports nothing eagerly, so `genrec.evaluate` can use
`genrec.train.data` without a cycle."""
