"""Training and the codebook at scale (issue 23), on a 2-core, 24 GiB machine with no GPU.

    python -m benchmarks.bench_scale_train                       # every part (about an hour)
    python -m benchmarks.bench_scale_train --parts beauty        # one part (a minute)

Parts (`--parts`, comma-separated):

- **beauty**: the balanced RQ-KMeans of Amazon Beauty's item vectors with the full-batch quantiser
  (today's) and the mini-batch one forced on it (`sid.kmeans_mode=minibatch`, batches of
  `--beauty-batch` items, well under Beauty's 12,101), side by side on the same vectors: collision
  rate, utilisation, entropy and seconds. Needs `../shared/data` (skipped, and said so, without it).
- **codebook**: the codebook step on a catalogue of a million items: a synthetic log of
  `--codebook-events` events at `--events-per-item` events per item, ingested and split on the
  embedded Ray (not timed), then the timed step in its own process: the co-occurrence counts of the
  training split, the item features (attributes, value, collaborative) and the mini-batch quantiser.
  Its time, against the issue's 15 minutes, and the peak RSS of the process tree.
- **training**: for each log (1M, 10M, 100M events): ingest and split on the embedded Ray and a
  codebook of its catalogue (none of it timed), then VSL training streamed from the partitioned
  splits (`train.examples=stream`) for `--train-steps` steps, under torchrun with one rank and with
  two ranks, one thread each, `--train-repeats` times each in the order 1, 2, 2, 1 (side by side, so
  a drift in the shared machine's speed falls on both): the mean examples/s (the loop's own clock:
  batches built and trained) and each rank's peak RSS (`ru_maxrss`).
- **ceiling**: on the smallest log, what two ranks can get from this machine: one rank alone, two
  independent one-rank runs at once (no all-reduce), and one two-rank run, in the order A B C C B A;
  the ratios separate the machine's own limit from the cost of the gradient all-reduce.
- **evaluation**: a log of a million users (`--eval-events` at `--eval-events-per-user`), ingested,
  split, with a codebook and a model trained for `--train-steps` steps (none of it timed), then the
  evaluate step with `train.evaluate_engine=ray` (a Ray task per bucket of users, on the embedded
  Ray's two workers): its time and the peak RSS of the process tree.

Results: benchmarks/results/scale_train.json and scale_train.png. Logs are generated once per size
into --work and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import save_result
from benchmarks.scaling import GIB, TreeMemory, engine_context, shown_path, synth_log
from genrec.config import GenrecConfig, SynthConfig, load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipes" / "scale_train.yaml"
PARTS = ("beauty", "codebook", "training", "ceiling", "evaluation")
# Issue 23's acceptance figures.
CODEBOOK_ITEMS = 1_000_000
CODEBOOK_BUDGET_SECONDS = 15 * 60.0
MAX_RSS_GROWTH = 1.2
MIN_TWO_RANK_SPEEDUP = 1.6
KIB = 1024


# ------------------------------------------------------------------------------------------------
# Beauty: the full-batch and the mini-batch quantiser on the same vectors
# ------------------------------------------------------------------------------------------------


def beauty_part(shared_data: Path, batch_items: int) -> dict[str, Any]:
    from genrec.data.ingest import ingest
    from genrec.data.split import leave_one_out
    from genrec.sid.codebook import codebook_order
    from genrec.sid.features import build_item_features
    from genrec.sid.quantize import collision_figures, level_usage, rq_kmeans

    if not (shared_data / "amazon-beauty").exists():
        return {"skipped": f"no {shared_data / 'amazon-beauty'}: run beside ../shared"}
    config = GenrecConfig()
    config.data.dataset, config.data.shared_data_dir = "amazon-beauty", str(shared_data)
    data = ingest(config)
    interactions = leave_one_out(data.interactions)
    features = build_item_features(codebook_order(data.catalogue), interactions, config.sid)
    out: dict[str, Any] = {"items": int(features.matrix.shape[0]),
                           "feature_dim": int(features.matrix.shape[1]), "batch_items": batch_items}
    modes = {"full": dataclasses.replace(config.sid, kmeans_mode="full"),
             "minibatch": dataclasses.replace(config.sid, kmeans_mode="minibatch",
                                              kmeans_batch_items=batch_items, kmeans_init_items=batch_items)}
    for mode, sid in modes.items():
        GenrecConfig(sid=sid).check()
        started = time.perf_counter()
        quantised = rq_kmeans(features.matrix, sid)
        seconds = time.perf_counter() - started
        levels = level_usage(quantised.codes, sid.codes_per_level)
        out[mode] = {**collision_figures(quantised.codes), "seconds": seconds, "levels": levels}
        print(f"beauty {mode}: collision {out[mode]['collision_rate']:.4f} in {seconds:.1f} s", flush=True)
    full, mini = out["full"], out["minibatch"]
    out["collision_no_worse"] = mini["collision_rate"] <= full["collision_rate"]
    out["levels_within_1_percent"] = all(
        abs(m[key] - f[key]) <= 0.01 * f[key]
        for f, m in zip(full["levels"], mini["levels"], strict=True)
        for key in ("utilisation", "entropy_bits"))
    return out


# ------------------------------------------------------------------------------------------------
# The codebook of a million items
# ------------------------------------------------------------------------------------------------


def prepare_splits(config: GenrecConfig, log_dir: Path, folder: Path) -> None:
    """Ingest and split on the embedded Ray (not timed); kept in `folder` for a rerun."""
    from genrec.data.ingest_step import ingest_to_artefacts
    from genrec.data.split_step import split_to_artefact

    if (folder / "splits" / "_partitioning.json").is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=str(log_dir)))
    ingest_to_artefacts(config, folder / "interactions", folder / "catalogue.parquet")
    split_to_artefact(config, folder / "interactions", folder / "splits")
    shutil.rmtree(folder / "interactions")


def codebook_child(config: GenrecConfig, folder: Path, figures_path: Path) -> None:
    """The codebook step, as the pipeline's runs it on Ray: counts, features, quantiser."""
    import pandas as pd

    from genrec.sid.codebook import build_codebook, codebook_order
    from genrec.sid.cooccurrence import cooccurrence_of_splits

    started = time.perf_counter()
    catalogue = codebook_order(pd.read_parquet(folder / "catalogue.parquet"))
    counts = cooccurrence_of_splits(config, folder / "splits", catalogue["item_id"].to_numpy())
    counted = time.perf_counter() - started
    codebook = build_codebook(catalogue, None, config.sid, cooccurrence=counts)
    metrics = codebook.metrics
    level_keys = ("utilisation", "entropy_bits", "entropy_ratio", "max_items_per_code")
    figures = {"items": len(codebook), "count_seconds": counted,
               "features_seconds": metrics["features_seconds"],
               "quantise_seconds": metrics["quantise_seconds"],
               "seconds": time.perf_counter() - started, "parts": codebook.parts,
               "collision_rate": metrics["collision_rate"],
               "levels": [{k: metrics[f"level{level}_{k}"] for k in level_keys}
                          for level in range(codebook.code_levels)]}
    figures_path.write_text(json.dumps(figures))


def codebook_part(args: argparse.Namespace, config: GenrecConfig, work: Path) -> dict[str, Any]:
    synth = SynthConfig(events_per_item=args.events_per_item)
    log_dir = synth_log(args.codebook_events, args.seed, work, synth, f"items{args.events_per_item:g}")
    folder = work / f"codebook-{args.codebook_events}-{args.seed}"
    with engine_context("ray", config):
        prepare_splits(config, log_dir, folder)
        figures_path = folder / "codebook.json"
        figures_path.unlink(missing_ok=True)
        command = [sys.executable, "-m", "benchmarks.bench_scale_train", "--codebook-child",
                   "--folder", str(folder), "--config", args.config, "--figures", str(figures_path),
                   *[a for o in args.set for a in ("--set", o)]]
        started = time.perf_counter()
        with TreeMemory(os.getpid()) as memory:
            subprocess.run(command, cwd=REPO, check=True)
        wall = time.perf_counter() - started
    figures = json.loads(figures_path.read_text())
    figures.update({"events": args.codebook_events, "events_per_item": args.events_per_item,
                    "wall_seconds": wall, "peak_rss_gib": memory.peak_rss / GIB,
                    "peak_pss_gib": memory.peak_pss / GIB,
                    "within_15_minutes": wall <= CODEBOOK_BUDGET_SECONDS})
    print(f"codebook of {figures['items']:,} items in {wall:.0f} s, "
          f"peak RSS {figures['peak_rss_gib']:.2f} GiB", flush=True)
    return figures


# ------------------------------------------------------------------------------------------------
# Training streamed from the splits, one rank and two
# ------------------------------------------------------------------------------------------------


def training_codebook(config: GenrecConfig, folder: Path) -> Path:
    """A codebook of the log's catalogue (attributes and value, the mini-batch quantiser above
    `sid.kmeans_full_max_items`): the training throughput does not depend on which codes items get,
    so the co-occurrence counts are left out."""
    import pandas as pd

    from genrec.sid.codebook import build_codebook

    path = folder / "codebook"
    if not (path / "manifest.json").is_file():
        sid = dataclasses.replace(config.sid, use_collaborative=False)
        build_codebook(pd.read_parquet(folder / "catalogue.parquet"), None, sid).save(path)
    return path


def train_child(config: GenrecConfig, folder: Path, steps: int, figures_path: Path,
                model_dir: Path | None, job: str) -> None:
    """One rank of the training run `job` (under torchrun); rank 0 saves the model to `model_dir`."""
    from genrec.sid.codebook import load_codebook
    from genrec.train.run import run_training

    rank = int(os.environ.get("RANK", "0"))
    result = run_training(config, folder / "splits", load_codebook(folder / "codebook", with_items=False),
                          folder / f"train-work-{job}", model_dir, stop_after_steps=steps,
                          log=lambda line: print(line, flush=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    Path(f"{figures_path}.rank{rank}").write_text(json.dumps(
        {"rank": rank, "steps": result.steps, "examples_per_second": result.samples_per_second,
         "examples_per_epoch": result.stats["train_examples"],
         "train_seconds": result.train_seconds, "peak_rss_gib": peak / GIB}))


def launch_training(args: argparse.Namespace, folder: Path, ranks: int, job: str,
                    model_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """torchrun of `ranks` ranks at one thread each, training `args.train_steps` steps as `job`."""
    shutil.rmtree(folder / f"train-work-{job}", ignore_errors=True)
    for old in folder.glob(f"train-{job}.json.rank*"):
        old.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "benchmarks.bench_scale_train", "--train-child", "--folder", str(folder), "--job", job,
               "--config", args.config, "--figures", str(folder / f"train-{job}.json"),
               "--train-steps", str(args.train_steps),
               *(["--model-dir", str(model_dir)] if model_dir else []),
               *[a for o in args.set for a in ("--set", o)]]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def training_figures(folder: Path, ranks: int, job: str, launched: subprocess.Popen[bytes]) -> dict[str, Any]:
    """What a launched run reports once it ends (its rank 0's clock; every rank's peak RSS)."""
    if launched.wait() != 0:
        raise SystemExit(f"training run {job} failed with exit {launched.returncode}")
    per_rank = [json.loads(folder.joinpath(f"train-{job}.json.rank{r}").read_text()) for r in range(ranks)]
    shutil.rmtree(folder / f"train-work-{job}", ignore_errors=True)
    return {"ranks": ranks, "examples_per_second": per_rank[0]["examples_per_second"],
            "examples_per_epoch": per_rank[0]["examples_per_epoch"],
            "steps": per_rank[0]["steps"], "peak_rss_gib_per_rank": [r["peak_rss_gib"] for r in per_rank]}


def training_run(args: argparse.Namespace, folder: Path, ranks: int,
                 model_dir: Path | None = None) -> dict[str, Any]:
    job = f"{ranks}"
    return training_figures(folder, ranks, job, launch_training(args, folder, ranks, job, model_dir))


def rank_order(repeats: int) -> list[int]:
    """One rank, two ranks, two ranks, one rank, ...: the runs alternate (ABBA), so a drift in the
    shared machine's speed over the run falls on both alike."""
    return [ranks for i in range(repeats) for ranks in ((1, 2) if i % 2 == 0 else (2, 1))]


def averaged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one rank count: their mean examples/s (each run's kept) and the peak RSS of each
    rank over them."""
    speeds = [run["examples_per_second"] for run in runs]
    return {**runs[0], "examples_per_second": sum(speeds) / len(speeds), "runs_examples_per_second": speeds,
            "peak_rss_gib_per_rank": [max(per_rank) for per_rank in
                                      zip(*(run["peak_rss_gib_per_rank"] for run in runs), strict=True)]}


def training_part(args: argparse.Namespace, config: GenrecConfig, work: Path) -> dict[str, Any]:
    sizes: dict[int, dict[str, Any]] = {}
    for events in sorted(args.events):
        log_dir = synth_log(events, args.seed, work)
        folder = work / f"train-{events}-{args.seed}"
        with engine_context("ray", config):
            prepare_splits(config, log_dir, folder)
        training_codebook(config, folder)
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for ranks in rank_order(args.train_repeats):
            run = training_run(args, folder, ranks)
            runs[ranks].append(run)
            print(f"{events:,} events, {ranks} rank(s): {run['examples_per_second']:.0f} examples/s, "
                  f"peak RSS per rank {max(run['peak_rss_gib_per_rank']):.2f} GiB", flush=True)
        sizes[events] = {str(ranks): averaged(done) for ranks, done in runs.items()}
        shutil.rmtree(folder, ignore_errors=True)  # the next size needs the disk
    events = sorted(sizes)
    smallest, largest = events[0], events[-1]
    rss = {n: max(max(sizes[n][r]["peak_rss_gib_per_rank"]) for r in ("1", "2")) for n in events}
    one = {n: sizes[n]["1"]["examples_per_second"] for n in events}
    two = {n: sizes[n]["2"]["examples_per_second"] for n in events}
    return {
        "sizes": sizes,
        "peak_rss_per_rank_growth": rss[largest] / rss[smallest],
        "rss_flat_within_20_percent": rss[largest] <= MAX_RSS_GROWTH * rss[smallest],
        "examples_per_second_one_rank": one,
        "throughput_largest_over_smallest": one[largest] / one[smallest],
        "two_rank_speedup": {n: two[n] / one[n] for n in events},
        "two_ranks_at_least_1_6x": all(two[n] >= MIN_TWO_RANK_SPEEDUP * one[n] for n in events),
    }


def ceiling_part(args: argparse.Namespace, config: GenrecConfig, work: Path) -> dict[str, Any]:
    """On the smallest log, in the order A B C C B A: one rank alone (A); two independent one-rank
    runs at once (B: no all-reduce, so what two single-threaded trainings get out of this machine's
    two cores together); one two-rank run (C). B/A is the machine's ceiling for two ranks, C/B what
    the gradient all-reduce and the lockstep cost."""
    events = min(args.events)
    log_dir = synth_log(events, args.seed, work)
    folder = work / f"ceiling-{events}-{args.seed}"
    with engine_context("ray", config):
        prepare_splits(config, log_dir, folder)
    training_codebook(config, folder)
    runs: dict[str, list[float]] = {"one": [], "pair": [], "ddp": []}
    for kind in ("one", "pair", "ddp", "ddp", "pair", "one"):
        if kind == "pair":
            launched = [(job, launch_training(args, folder, 1, job)) for job in ("pair0", "pair1")]
            speed = sum(training_figures(folder, 1, job, run)["examples_per_second"] for job, run in launched)
        else:
            speed = training_run(args, folder, 1 if kind == "one" else 2)["examples_per_second"]
        runs[kind].append(speed)
        print(f"ceiling at {events:,} events, {kind}: {speed:.0f} examples/s", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    mean = {kind: sum(speeds) / len(speeds) for kind, speeds in runs.items()}
    return {"events": events, "runs_examples_per_second": runs, "examples_per_second": mean,
            "independent_pair_over_one": mean["pair"] / mean["one"],
            "two_ranks_over_one": mean["ddp"] / mean["one"],
            "two_ranks_over_independent_pair": mean["ddp"] / mean["pair"]}


# ------------------------------------------------------------------------------------------------
# Evaluation of a million users as Ray tasks
# ------------------------------------------------------------------------------------------------


def evaluate_child(config: GenrecConfig, folder: Path, figures_path: Path) -> None:
    """The evaluate step with `train.evaluate_engine=ray`, joining the benchmark's Ray."""
    from genrec.evaluate_buckets import evaluate_partitioned

    started = time.perf_counter()
    results = evaluate_partitioned(config, folder / "splits", folder / "model")
    figures_path.write_text(json.dumps({"seconds": time.perf_counter() - started, "metrics": results}))


def evaluation_part(args: argparse.Namespace, config: GenrecConfig, work: Path) -> dict[str, Any]:
    """A log of a million users (ingested, split, a codebook and a briefly trained model: not timed),
    then the evaluate step on the embedded Ray's two workers: its time and the peak RSS of the tree."""
    import pandas as pd

    synth = SynthConfig(events_per_user=args.eval_events_per_user)
    log_dir = synth_log(args.eval_events, args.seed, work, synth, f"users{args.eval_events_per_user:g}")
    folder = work / f"evaluate-{args.eval_events}-{args.seed}"
    with engine_context("ray", config):
        prepare_splits(config, log_dir, folder)
        training_codebook(config, folder)
        training_run(args, folder, 1, folder / "model")
        figures_path = folder / "evaluate.json"
        command = [sys.executable, "-m", "benchmarks.bench_scale_train", "--evaluate-child",
                   "--folder", str(folder), "--config", args.config, "--figures", str(figures_path),
                   *[a for o in args.set for a in ("--set", o)]]
        started = time.perf_counter()
        with TreeMemory(os.getpid()) as memory:
            subprocess.run(command, cwd=REPO, check=True)
        wall = time.perf_counter() - started
    users = int(pd.read_parquet(folder / "splits", columns=["user_id"])["user_id"].nunique())
    figures = json.loads(figures_path.read_text())
    figures.update({"users": users, "workers": config.ray.num_cpus, "wall_seconds": wall,
                    "users_per_second": users / wall, "peak_rss_gib": memory.peak_rss / GIB,
                    "peak_pss_gib": memory.peak_pss / GIB, "beam_widths": config.train.beam_widths})
    print(f"evaluation of {users:,} users in {wall:.0f} s, peak RSS {figures['peak_rss_gib']:.2f} GiB",
          flush=True)
    return figures


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def plot(figures: dict[str, Any]):  # type: ignore[no-untyped-def]
    """One panel per figure the run measured: training speed and RSS against events, the ceiling's
    three ways of using two cores, evaluation's time and memory, Beauty's codebooks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name, present in (
        ("speed", "training" in figures), ("rss", "training" in figures), ("ceiling", "ceiling" in figures),
        ("evaluation", "evaluation" in figures), ("beauty", "full" in figures.get("beauty", {})))
        if present] or ["empty"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    axis_of = dict(zip(panels, axes[0], strict=True))
    training = figures.get("training")
    if training:
        # Keys are ints in the run that measured them, strings once read back from the JSON.
        keys = sorted(training["sizes"], key=int)
        events = [int(key) for key in keys]
        for ranks in ("1", "2"):
            runs = [training["sizes"][key][ranks] for key in keys]
            axis_of["speed"].plot(events, [run["examples_per_second"] for run in runs],
                                  marker="o", label=f"{ranks} rank(s)")
            axis_of["rss"].plot(events, [max(run["peak_rss_gib_per_rank"]) for run in runs],
                                marker="o", label=f"{ranks} rank(s)")
        for axis, label in ((axis_of["speed"], "examples/s (training loop)"),
                            (axis_of["rss"], "peak RSS per rank (GiB)")):
            axis.set_xscale("log")
            axis.set_xlabel("events in the log")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            axis.legend()
        axis_of["rss"].set_ylim(bottom=0)
    ceiling = figures.get("ceiling")
    if ceiling:
        axis = axis_of["ceiling"]
        kinds = [("one", "1 rank"), ("pair", "2 independent\n1-rank runs"), ("ddp", "2 DDP ranks")]
        axis.bar([label for _, label in kinds], [ceiling["examples_per_second"][kind] for kind, _ in kinds])
        axis.set_ylabel("examples/s (sum over processes)")
        axis.set_title(f"two cores, {ceiling['events']:,}-event log")
    evaluation = figures.get("evaluation")
    if evaluation:
        axis = axis_of["evaluation"]
        axis.bar(["wall (min)", "peak RSS of the tree (GiB)"],
                 [evaluation["wall_seconds"] / 60, evaluation["peak_rss_gib"]])
        axis.set_title(f"evaluation of {evaluation['users']:,} users, {evaluation['workers']} Ray workers")
    beauty = figures.get("beauty")
    if beauty and "full" in beauty:
        axis = axis_of["beauty"]
        labels = ["collision rate"] + [f"L{i} entropy/8" for i in range(len(beauty["full"]["levels"]))]
        for offset, mode in ((-0.2, "full"), (0.2, "minibatch")):
            entropies = [level["entropy_bits"] / 8 for level in beauty[mode]["levels"]]
            values = [beauty[mode]["collision_rate"], *entropies]
            axis.bar([i + offset for i in range(len(values))], values, width=0.4, label=mode)
        axis.set_xticks(range(len(labels)), labels, fontsize=8)
        axis.set_title("Amazon Beauty: full-batch vs mini-batch RQ-KMeans")
        axis.legend()
    fig.suptitle("genrec training and codebook at scale, 2-core machine")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--train-repeats", type=int, default=2,
                        help="runs of each rank count per log, alternating 1, 2, 2, 1, ...")
    parser.add_argument("--codebook-events", type=int, default=20_000_000)
    parser.add_argument("--events-per-item", type=float, default=20.0,
                        help="the codebook log's events per item (20M events / 20 = 1M items)")
    parser.add_argument("--beauty-batch", type=int, default=4096)
    parser.add_argument("--eval-events", type=int, default=10_000_000)
    parser.add_argument("--eval-events-per-user", type=float, default=10.0,
                        help="the evaluation log's events per user (10M events / 10 = 1M users)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "genrec-scale"))
    parser.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--config", default=str(RECIPE))
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    parser.add_argument("--name", default="scale_train")
    parser.add_argument("--codebook-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--job", default="1", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--figures", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    if args.codebook_child:
        codebook_child(config, Path(args.folder), Path(args.figures))
        return
    if args.evaluate_child:
        evaluate_child(config, Path(args.folder), Path(args.figures))
        return
    if args.train_child:
        train_child(config, Path(args.folder), args.train_steps, Path(args.figures),
                    Path(args.model_dir) if args.model_dir else None, args.job)
        return
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"recipe": shown_path(Path(args.config)), "config_overrides": args.set}
    if "beauty" in parts:
        figures["beauty"] = beauty_part(Path(args.shared_data), args.beauty_batch)
    if "codebook" in parts:
        figures["codebook"] = codebook_part(args, config, work)
    if "training" in parts:
        figures["training"] = training_part(args, config, work)
    if "ceiling" in parts:
        figures["ceiling"] = ceiling_part(args, config, work)
    if "evaluation" in parts:
        figures["evaluation"] = evaluation_part(args, config, work)
    save_result(args.name, figures, lambda: plot(figures))


if __name__ == "__main__":
    main()
