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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec.config import GenrecConfig
from genrec.data.schema import SPLIT_COLUMN, ContractError
from genrec.evaluate import evaluate
from genrec.model.artefact import ModelArtefactError, TrainedModel
from genrec.model.beam import TrieTables
from genrec.model.decoder import SidDecoder
from genrec.train.data import ExampleSet, evaluation_requests, training_examples
from genrec.train.rspo.candidates import Requests, gain_scale
from genrec.train.rspo.trainer import RspoTrainer, StepStats, TailAverage, _mean_stats
from genrec.train.rspo.versions import RspoResult, _load_state, reference_decoder


def _validate(decoder: SidDecoder, requests: ExampleSet, config: GenrecConfig, tables: TrieTables
              ) -> dict[str, float]:
    return evaluate(decoder, requests, tables, config.train.beam_widths, config.train.top_k,
                    config.train.eval_batch_size, device=decoder.item_codes.device,
                    exclude_history=config.train.exclude_history)


def finetune(config: GenrecConfig, splits: pd.DataFrame, model: TrainedModel,
             model_dir: str | Path | None = None, log: Callable[[str], None] = print,
             on_step: Callable[[int, int], None] | None = None) -> RspoResult:
    """RSPO (or DPO, `rspo.loss`) on the TRAINING rows of `splits`, starting from `model`.
    Validation Recall/NDCG/Value@K on a subset of users is reported before and after."""
    rspo = config.rspo
    if SPLIT_COLUMN not in splits.columns:
        raise ContractError(f"splits lack the {SPLIT_COLUMN!r} column: pass the leave-one-out splits "
                            "(the split_data output), whose train rows RSPO learns from")
    if model.decoder.summary_dim:
        raise ModelArtefactError("RSPO of a decoder with summary tokens is not wired yet: fine-tune a "
                                 "model trained with model.use_summary=false")
    if rspo.threads:
        torch.set_num_threads(rspo.threads)
    torch.manual_seed(rspo.seed)
    recent_items = model.decoder.config.recent_items
    examples = training_examples(splits, model.item_ids, recent_items, rspo.max_examples_per_user,
                                 rspo.skip_latest)
    if not len(examples):
        raise ValueError("no training examples: every user needs two or more training interactions"
                         + (f" beyond the rspo.skip_latest={rspo.skip_latest} latest ones: lower it"
                            if rspo.skip_latest else ""))
    requests = Requests.from_examples(examples, rspo.positive_window)
    valid = evaluation_requests(splits, model.item_ids, recent_items, "valid")
    if rspo.valid_users and len(valid) > rspo.valid_users:
        pick = np.random.default_rng(rspo.seed).choice(len(valid), rspo.valid_users, replace=False)
        valid = valid.subset(np.sort(pick))
    saved = _load_state(model_dir)
    scale = float(saved["gain_scale"]) if saved else gain_scale(examples.values, rspo.reward_transform)
    trainer = RspoTrainer(copy.deepcopy(model.decoder), reference_decoder(model, model_dir), rspo, scale,
                          saved, model.decoder.item_codes.device, include_extras=rspo.include_target)
    before = _validate(trainer.policy, valid, config, trainer.tables)
    per_epoch = -(-len(requests) // rspo.batch_size)
    total = rspo.epochs * per_epoch
    if rspo.max_steps:
        total = min(total, rspo.max_steps)
    log(f"rspo ({rspo.loss}, beta {rspo.beta}, kl {rspo.kl_weight}): {len(requests)} training requests, "
        f"{total} steps of {rspo.batch_size}")
    deadline = rspo.max_minutes * 60.0 if rspo.max_minutes else math.inf
    started = time.perf_counter()
    curve: list[dict[str, float]] = []
    window: list[StepStats] = []
    done = 0
    tail = TailAverage(trainer.policy, first_step=int(total * rspo.average_from) + 1 if rspo.average_from
                       else total + 1)
    for epoch in range(rspo.epochs):
        order = np.random.default_rng([rspo.seed, epoch]).permutation(len(requests))
        for start in range(0, len(order), rspo.batch_size):
            if done >= total or time.perf_counter() - started > deadline:
                break
            window.append(trainer.step(requests.subset(order[start:start + rspo.batch_size])))
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
    after = _validate(trainer.policy, valid, config, trainer.tables)
    log("valid subset before -> after: " + " ".join(
        f"{k} {before[k]:.4f}->{after[k]:.4f}" for k in ("recall@10", "ndcg@10", "value@10")))
    stats = {"mode": "offline", "loss": rspo.loss, "steps": done, "train_seconds": seconds,
             "requests": len(requests), "finished": done == total, "averaged_steps": tail.count,
             "valid_before": before, "valid_after": after, "config": dataclasses.asdict(rspo)}
    return RspoResult(trainer.policy, trainer.reference.state_dict(), trainer.state(), curve, stats)
