"""Training: examples and batches (`data`), the VSL loop (`loop`), checkpoints, DDP, `run_training`,
and RSPO fine-tuning (`rspo`, a package).

Import from the submodules; this package imports nothing eagerly, so `genrec.evaluate` can use
`genrec.train.data` without a cycle."""
