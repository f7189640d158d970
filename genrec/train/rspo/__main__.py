"""`python -m genrec.train.rspo` (alone, or under `torchrun --nproc_per_node=P -m genrec.train.rspo`):
offline RSPO of a VSL model on the training rows of the splits; rank 0 writes the tuned model."""

from __future__ import annotations

import argparse
import sys

from genrec.config import load_config
from genrec.model.artefact import load_model
from genrec.train.distributed import init_distributed, shutdown
from genrec.train.rspo.offline import finetune
from genrec.train.rspo.versions import save_rspo_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrec.train.rspo", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON config file (defaults when absent)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--splits", required=True, help="splits: parquet file or partitioned folder")
    parser.add_argument("--vsl-model", required=True, help="the VSL model folder to start from")
    parser.add_argument("--model-dir", required=True, help="the tuned model folder to write")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    dist = init_distributed()
    try:
        start = load_model(args.vsl_model, dist.device)
        result = finetune(config, args.splits, start, args.vsl_model,
                          log=lambda line: print(line, flush=True), dist=dist)
        if dist.is_main:
            save_rspo_model(args.model_dir, result, start.item_ids, args.vsl_model,
                            value_tilt=start.value_tilt)
        dist.barrier()
    finally:
        shutdown(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
