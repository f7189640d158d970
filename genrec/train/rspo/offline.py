"""Offline RSPO: fine-tuning the VSL model on the training split.

Training reads only `train` rows (genrec.train.data.training_examples): validation and test targets,
and the items after them, never enter a candidate list, a reward or a context. Validation
Recall/NDCG/Value@K on a subset of users is reported before and after. Why the defaults are what
they are (teacher forcing off, skipping the latest positions, tail averaging) is in docs/rspo.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec.config import GenrecConfig
from genrec.data.schema import SPLIT_COLUMN, ContractError
from genrec.evaluate import evaluate
from genrec.io import read_parquet
from genrec.model.artefact import ModelArtefactError, TrainedModel
from genrec.model.beam import TrieTables
from genrec.model.decoder import SidDecoder
from genrec.progress import LineProgress
from genrec.train.data import ExampleSet, evaluation_requests, training_examples
from genrec.train.distributed import Distributed
from genrec.train.rspo.candidates import Requests, gain_scale
from genrec.train.rspo.trainer import RspoTrainer, StepStats, TailAverage, _mean_stats
from genrec.train.rspo.versions import RspoResult, _load_state, reference_decoder
from genrec.train.stream import ExampleRecipe, RequestSample, StreamedExamples, scan_splits


def _validate(decoder: SidDecoder, requests: ExampleSet, config: GenrecConfig, tables: TrieTables
              ) -> dict[str, float]:
    return evaluate(decoder, requests, tables, config.train.beam_widths, config.train.top_k,
                    config.train.eval_batch_size, device=decoder.item_codes.device,
                    exclude_history=config.train.exclude_history)


@dataclass
class RequestSource:
    """The requests of an offline run, batch by batch: built in memory from the splits, or streamed
    from the partitioned splits a bucket at a time (`rspo.examples`). `valid`: the validation
    requests (rank 0 validates); `scale`: the mean transformed value of the training targets."""

    count: int
    scale: float
    valid: ExampleSet
    batches: Callable[[int], Iterator[Requests]]
    steps_in_epoch: Callable[[int], int]


def memory_requests(config: GenrecConfig, splits: pd.DataFrame, model: TrainedModel,
                    dist: Distributed) -> RequestSource:
    """Every request built up front. One rank steps through a fresh permutation per epoch in
    batches; with several ranks, rank r takes batches r, r + world, ... (the same count on each)."""
    rspo = config.rspo
    if SPLIT_COLUMN not in splits.columns:
        raise ContractError(f"splits lack the {SPLIT_COLUMN!r} column: pass the leave-one-out splits "
                            "(the split_data output), whose train rows RSPO learns from")
    recent_items = model.decoder.config.recent_items
    examples = training_examples(splits, model.item_ids, recent_items, rspo.max_examples_per_user,
                                 rspo.skip_latest)
    _require_examples(len(examples), rspo.skip_latest)
    requests = Requests.from_examples(examples, rspo.positive_window)
    valid = evaluation_requests(splits, model.item_ids, recent_items, "valid")
    if rspo.valid_users and len(valid) > rspo.valid_users:
        pick = np.random.default_rng(rspo.seed).choice(len(valid), rspo.valid_users, replace=False)
        valid = valid.subset(np.sort(pick))
    per_epoch = -(-len(requests) // rspo.batch_size) // dist.world

    def batches(epoch: int) -> Iterator[Requests]:
        order = np.random.default_rng([rspo.seed, epoch]).permutation(len(requests))
        for batch in range(per_epoch):
            start = (batch * dist.world + dist.rank) * rspo.batch_size
            yield requests.subset(order[start:start + rspo.batch_size])

    return RequestSource(len(requests), gain_scale(examples.values, rspo.reward_transform), valid, batches,
                         lambda epoch: per_epoch)


def streamed_requests(config: GenrecConfig, splits: str | Path, model: TrainedModel,
                      dist: Distributed) -> RequestSource:
    """Requests read from the partitioned splits a bucket at a time (genrec.train.stream): one scan
    counts them, sums their rewards and samples the validation users; each epoch every rank reads
    its own shard of the buckets, in lockstep. Memory holds a bucket, whatever the size of the log."""
    rspo = config.rspo
    recipe = ExampleRecipe(model.item_ids, model.decoder.config.recent_items, rspo.max_examples_per_user,
                           rspo.skip_latest)
    sample = RequestSample("valid", rspo.valid_users, rspo.seed)
    plan, valid = scan_splits(splits, recipe, rspo.reward_transform, sample,
                              LineProgress("rspo requests: counting per bucket"), dist)
    _require_examples(plan.total, rspo.skip_latest)
    stream = StreamedExamples(plan, recipe, rspo.batch_size, rspo.seed).for_rank(dist.rank, dist.world)

    def batches(epoch: int) -> Iterator[Requests]:
        # A stream batch mixes users, so only the example's own next item can be its positive.
        for examples in stream.batches(epoch):
            yield Requests.from_examples(examples, 1)

    scale = plan.value_mean if math.isfinite(plan.value_mean) and plan.value_mean > 0 else 1.0
    assert valid is not None  # the scan returns the sample it was asked for
    return RequestSource(plan.total, scale, valid, batches, stream.batches_in_epoch)


def _require_examples(count: int, skip_latest: int) -> None:
    if not count:
        raise ValueError("no training examples: every user needs two or more training interactions"
                         + (f" beyond the rspo.skip_latest={skip_latest} latest ones: lower it"
                            if skip_latest else ""))


def finetune(config: GenrecConfig, splits: pd.DataFrame | str | Path, model: TrainedModel,
             model_dir: str | Path | None = None, log: Callable[[str], None] = print,
             on_step: Callable[[int, int], None] | None = None,
             dist: Distributed | None = None) -> RspoResult:
    """RSPO (or DPO, `rspo.loss`) on the TRAINING rows of `splits` (a frame, or a parquet file or
    partitioned folder: read whole with `rspo.examples=memory`, streamed with `stream`), starting
    from `model`. Under torchrun every rank runs this with its `dist`: each steps on its own
    batches and the gradients are averaged. Rank 0 logs and reports validation Recall/NDCG/Value@K
    on a subset of users before and after."""
    rspo = config.rspo
    dist = dist or Distributed()
    log = log if dist.is_main else (lambda _: None)
    if model.decoder.summary_dim:
        raise ModelArtefactError("RSPO of a decoder with summary tokens is not wired yet: fine-tune a "
                                 "model trained with model.use_summary=false")
    if rspo.threads:
        torch.set_num_threads(rspo.threads)
    torch.manual_seed(rspo.seed)
    if rspo.examples == "stream":
        if isinstance(splits, pd.DataFrame):
            raise ValueError("rspo.examples=stream reads the partitioned splits folder: pass its path, "
                             "not a frame")
        source = streamed_requests(config, splits, model, dist)
    else:
        frame = splits if isinstance(splits, pd.DataFrame) else read_parquet(splits)
        source = memory_requests(config, frame, model, dist)
    saved = _load_state(model_dir)
    scale = float(saved["gain_scale"]) if saved else source.scale
    trainer = RspoTrainer(copy.deepcopy(model.decoder), reference_decoder(model, model_dir), rspo, scale,
                          saved, model.decoder.item_codes.device, include_extras=rspo.include_target,
                          world=dist.world)
    before = _validate(trainer.policy, source.valid, config, trainer.tables) if dist.is_main else {}
    total = sum(source.steps_in_epoch(epoch) for epoch in range(rspo.epochs))
    if rspo.max_steps:
        total = min(total, rspo.max_steps)
    log(f"rspo ({rspo.loss}, beta {rspo.beta}, kl {rspo.kl_weight}): {source.count} training requests "
        f"({rspo.examples}), {total} steps of {rspo.batch_size} on each of {dist.world} rank(s)")
    deadline = rspo.max_minutes * 60.0 if rspo.max_minutes else math.inf
    started = time.perf_counter()
    curve: list[dict[str, float]] = []
    window: list[StepStats] = []
    done = 0
    tail = TailAverage(trainer.policy, first_step=int(total * rspo.average_from) + 1 if rspo.average_from
                       else total + 1)
    for epoch in range(rspo.epochs):
        for requests in source.batches(epoch):
            # Every rank must take the same decision, or one waits for the others' gradients.
            late = deadline < math.inf and dist.any_rank(time.perf_counter() - started > deadline)
            if done >= total or late:
                break
            window.append(trainer.step(requests))
            done += 1
            tail.update(done)
            if on_step is not None:
                on_step(done, total)
            if done % rspo.log_every == 0 or done == total:
                point = _mean_stats(window, done, time.perf_counter() - started)
                curve.append(point)
                window = []
                log(f"step {done}/{total} loss {point['loss']:.4f} preference {point['preference']:.4f} "
                    f"kl {point['kl']:.5f} positive in beam {point['positive_in_beam']:.3f} "
                    f"{point['seconds']:.0f}s")
    seconds = time.perf_counter() - started
    if tail.count:
        tail.apply()
        log(f"policy: the mean of the weights after steps {tail.first_step}-{done} ({tail.count} steps)")
    elif rspo.average_from:
        log(f"policy: the last step's weights: the run stopped at step {done}, before averaging was to "
            f"start at step {tail.first_step} (rspo.max_minutes)")
    after = _validate(trainer.policy, source.valid, config, trainer.tables) if dist.is_main else {}
    if dist.is_main:
        log("valid subset before -> after: " + " ".join(
            f"{k} {before[k]:.4f}->{after[k]:.4f}" for k in ("recall@10", "ndcg@10", "value@10")))
    stats = {"mode": "offline", "loss": rspo.loss, "steps": done, "train_seconds": seconds,
             "requests": source.count, "finished": done == total, "averaged_steps": tail.count,
             "world_size": dist.world, "examples": rspo.examples,
             "valid_before": before, "valid_after": after, "config": dataclasses.asdict(rspo)}
    return RspoResult(trainer.policy, trainer.reference.state_dict(), trainer.state(), curve, stats)
