"""`python -m genrec.train` (alone, or under `torchrun --nproc_per_node=P -m genrec.train`)."""

from __future__ import annotations

import argparse
import sys

from genrec.config import load_config
from genrec.sid.codebook import Codebook
from genrec.train.run import run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.train", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON config file (defaults when absent)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--splits", required=True, help="splits: parquet file or partitioned folder")
    parser.add_argument("--codebook", required=True, help="codebook folder (genrec.sid)")
    parser.add_argument("--work-dir", required=True, help="checkpoints go here; a rerun resumes")
    parser.add_argument("--model-dir", help="the model folder to write at the end")
    parser.add_argument("--stop-after-steps", type=int, help="stop as if killed after this step")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    run_training(config, args.splits, Codebook.load(args.codebook, with_items=False), args.work_dir,
                 args.model_dir, stop_after_steps=args.stop_after_steps,
                 log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
