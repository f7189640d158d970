"""UA-SID codebook quality and build time on MovieLens-100k, Amazon Beauty and Amazon Scientific.

    python -m benchmarks.bench_sid [--datasets movielens,beauty,scientific] [--shared-data DIR]

For each data set: ingest, leave-one-out split, build the codebook with the default `SidConfig`
(text on where the catalogue has text: MovieLens titles, Scientific titles + descriptions; Beauty
has none), and save `results/sid_<name>.json` + `.png` with the collision rate before dedup, code
utilisation and entropy per level, level-1 prefix coherence and build seconds. The text embeddings
are computed cold (an empty, temporary cache), so build seconds include them.

A few cheap variants per set show what each feature part contributes: they reuse the warm text
cache, and their seconds are not comparable with the main build's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.harness import save_result  # noqa: E402
from genrec.config import GenrecConfig, SidConfig  # noqa: E402
from genrec.data.ingest import ingest  # noqa: E402
from genrec.data.split import leave_one_out  # noqa: E402
from genrec.sid.codebook import Codebook, build_codebook  # noqa: E402
from genrec.sid.report import plot_code_usage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"movielens": "movielens-100k", "beauty": "amazon-beauty", "scientific": "amazon-scientific"}
# Beauty must build in under this on the 2-core development machine, text off (it has no text).
BEAUTY_BUDGET_SECONDS = 120.0

# name -> SidConfig overrides; each isolates one decision.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "movielens": {
        "collaborative_only": {"use_text": False, "use_attributes": False, "use_value": False},
        "no_collaborative": {"use_collaborative": False},
        "unbalanced": {"balanced": False},
    },
    "beauty": {
        "collaborative_only": {"use_attributes": False, "use_value": False},
        "attributes_only": {"use_value": False, "use_collaborative": False},
        "unbalanced": {"balanced": False},
        "rq_vae": {"quantizer": "rq_vae"},
    },
    "scientific": {
        "text_only": {"use_attributes": False, "use_value": False, "use_collaborative": False},
        "no_text": {"use_text": False},
        "no_collaborative": {"use_collaborative": False},
        "unbalanced": {"balanced": False},
    },
}

HEADLINE = ("collision_rate", "duplicate_rate", "max_items_per_prefix", "prefix_coherence_leaf",
            "prefix_coherence_leaf_random", "prefix_coherence_any", "build_seconds")


def per_level(codebook: Codebook) -> list[dict[str, float]]:
    keys = ("utilisation", "entropy_bits", "entropy_ratio", "max_items_per_code")
    return [{k: codebook.metrics[f"level{level}_{k}"] for k in keys} for level in range(codebook.code_levels)]


def summary(codebook: Codebook) -> dict[str, Any]:
    return {**{k: codebook.metrics.get(k) for k in HEADLINE}, "levels": per_level(codebook),
            "parts": codebook.parts}


def bench_dataset(name: str, shared_data: Path, text_cache: Path) -> dict[str, Any]:
    cfg = GenrecConfig()
    cfg.data.dataset = DATASETS[name]
    cfg.data.shared_data_dir = str(shared_data)
    cfg.sid.text_cache_dir = str(text_cache)
    data = ingest(cfg)
    interactions = leave_one_out(data.interactions)
    started = time.perf_counter()
    codebook = build_codebook(data.catalogue, interactions, cfg.sid)
    wall = time.perf_counter() - started
    figures: dict[str, Any] = {
        "dataset": cfg.data.dataset,
        "items": len(codebook),
        "users": int(interactions["user_id"].nunique()),
        "value_source": data.info.value_source,
        "level_sizes": codebook.level_sizes,
        "quantizer": cfg.sid.quantizer,
        "balanced": cfg.sid.balanced,
        "notes": codebook.notes,
        **summary(codebook),
        "build_wall_seconds": wall,
        "part_seconds": {k.removeprefix("feature_"): v for k, v in codebook.metrics.items()
                         if k.startswith("feature_") and k.endswith("_seconds")},
        "quantise_seconds": codebook.metrics["quantise_seconds"],
        "text_items": codebook.metrics.get("feature_items_with_text", 0.0),
    }
    if name == "beauty":
        figures["beauty_build_seconds_text_off"] = wall
        figures["beauty_under_2_minutes"] = wall < BEAUTY_BUDGET_SECONDS
    figures["variants"] = {}
    for variant, overrides in VARIANTS[name].items():
        sid: SidConfig = replace(cfg.sid, **overrides)
        GenrecConfig(sid=sid).check()
        figures["variants"][variant] = summary(build_codebook(data.catalogue, interactions, sid))
        print(f"{name} {variant}: collision {figures['variants'][variant]['collision_rate']:.4f}", flush=True)
    title = f"UA-SID code use: {cfg.data.dataset} ({len(codebook)} items, parts: {', '.join(codebook.parts)})"
    save_result(f"sid_{name}", figures, plot=lambda: plot_code_usage(codebook, title))
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--shared-data", type=Path,
                        default=Path(os.environ.get("GENREC_SHARED_DATA", REPO.parent / "shared" / "data")))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown data set {unknown[0]!r}: choose from {', '.join(DATASETS)}")
    with tempfile.TemporaryDirectory(prefix="sid-text-cache-") as cache:
        for name in names:
            if name != "movielens" and not args.shared_data.is_dir():
                print(f"skip {name}: {args.shared_data} is absent (the shared Amazon data sets)")
                continue
            bench_dataset(name, args.shared_data, Path(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
