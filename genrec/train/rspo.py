"""RSPO: ranking-guided softmax preference optimisation of the VSL model, offline and continual.

For a request (a user's recent items), the current policy pi beam-searches its top-n semantic IDs
(trie-constrained, so every candidate is a real item). Each candidate y_j gets a reward r_j: the
value of the item if it is a positive of the request (offline: the next training item, or the next
`rspo.positive_window` ones; continual: an impressed item with a reward in the feedback log), else
0. With s(y) = log pi(y) - log pi_ref(y) and pi_ref the frozen VSL model, each positive y_i adds

    w_i * -log( e^{beta s_i} / (e^{beta s_i} + sum_{j: r_j < r_i} e^{beta s_j}) )

a softmax over the candidates worse than it (list-wise, not pairwise). w_i is its ranking gain: the
gain g_i (transformed value) times the discount it gains by moving to the top,
g_i * (1 - 1/log2(2 + rank_i)) ("dcg"), optionally divided by the list's ideal DCG ("ndcg"). Only
y_i's own DCG term is counted; the shift of the items it overtakes is left out (LambdaRank-style).
`loss="dpo"` is the pairwise ablation on the same lists: the mean over worse j of
-log sigmoid(beta (s_i - s_j)), with the same weights and drift guard.

Choices (ours, measured in benchmarks/bench_rspo.py):
- Offline, a positive the beam missed does NOT join its list by default (`rspo.include_target`):
  those lists carry only the KL term, and RSPO stays on-policy, reordering what the policy already
  proposes. Teacher-forcing the missed target (ranked just past the end, weight = its whole gain)
  lowered validation Value@10 on MovieLens-100k by 9-13% against VSL in both recorded settings
  (benchmarks/results/rspo_sweep_movielens_first.json, _second.json), so it is an option, off.
  Feedback impressions always join their list: the served policy did propose them.
- Offline, RSPO should learn from positions the VSL model did not train on: `rspo.skip_latest`
  leaves out the latest ones VSL trained on (train.max_examples_per_user), or VSL holds its latest
  ones back (train.skip_latest) for RSPO. On positions VSL trained on, its beam finds the MovieLens
  training positive in 24% of lists against a validation Recall@10 of 13%: the preference signal
  rewards memorisation. Most such settings lowered validation Value@10 (rspo_sweep_movielens_*),
  and the one taken to test lost 4.7% there (rspo_movielens.json before commit e7f8772).
  On unseen positions the beam finds it in 12%, as on validation (rspo_sweep_movielens_skip*).
- The seed only orders the examples, yet at a constant learning rate it moves the last iterate a
  lot. On MovieLens validation, five seeds of one recipe spread Value@10 from -0.1% to +10.2%
  against VSL: a standard deviation of 4.2 points, and 4.4 for NDCG@10.
  - `rspo.average_from=0.5` keeps the mean of the second half's weights instead. That cuts both
    spreads to 1.8 points or less. The mean moves from +7.3% / -0.2% to +6.2% / -1.2%, a shift
    inside the old spread (rspo_sweep_movielens_avgA.json against _lastA and _confirm*).
  - On Beauty validation, averaging gives +2.8% / -0.7% against the last iterate's +1.2% / -1.7%
    (rspo_sweep_beauty_avgA.json, _lastA).
  - So averaging is the default.
- Drift guard: KL(pi || pi_ref) over each candidate list, both renormalised on the list, weighted
  by `rspo.kl_weight`. It is cheap (both log-probabilities are computed anyway) and acts exactly
  where the loss moves probability mass.
- Dropout is off for the policy as for the reference, so s(y) is exactly 0 before the first step
  and the loss measures only what fine-tuning changed.
- Training reads only `train` rows (genrec.train.data.training_examples): validation and test
  targets, and the items after them, never enter a candidate list, a reward or a context.

Continual mode (`continual_update`, `genrec train rspo --feedback LOG`) takes a feedback log in
time order. Rows that share (user_id, timestamp) are one request: its impressed items with their
rewards. The context is the user's interactions strictly before that time in a history log (a
point-in-time join, so the feedback item itself is never in its own context). Requests go in
(timestamp, user_id) order, `rspo.batch_size` to a step; a last partial batch is not trained on but
carried in the new version (`rspo_pending.parquet`) to the next update. With the optimiser state
carried too (`rspo_state.pt`), applying two logs one after the other takes exactly the steps that
applying both at once takes: same batches, same order, same Adam moments. Each update writes a new
folder <models_dir>/v<NNNN> and only reads the model it starts from.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.config import GenrecConfig, RspoConfig
from genrec.data.schema import SPLIT_COLUMN, ContractError
from genrec.evaluate import evaluate
from genrec.io import atomic_path
from genrec.model.artefact import ModelArtefactError, TrainedModel, load_model, save_model
from genrec.model.beam import TrieTables, beam_search
from genrec.model.decoder import PAD_ITEM, SidDecoder
from genrec.train.data import ExampleSet, evaluation_requests, item_rows, training_examples, transform_values
from genrec.train.loop import ADAM_BETAS

REFERENCE_FILE = "rspo_reference.pt"
STATE_FILE = "rspo_state.pt"
PENDING_FILE = "rspo_pending.parquet"

# The feedback log's columns: what each holds, and so what the error for a bad one says.
FEEDBACK_COLUMNS = {
    "user_id": "the user the items were shown to (string)",
    "item_id": "the impressed item, as in the catalogue (string)",
    "timestamp": "when the request was served (a datetime, or text pandas parses as one)",
    "reward": "the value the impression earned: a number >= 0, 0 for no conversion",
}
HISTORY_COLUMNS = ("user_id", "item_id", "timestamp")


class FeedbackError(ContractError):
    """A feedback or history log does not fit the schema; the message names the column and fix."""


# -- the loss ----------------------------------------------------------------------------------


def discounts(ranks: Tensor, list_size: int) -> Tensor:
    """DCG discount 1/log2(2 + rank) of a 0-based rank inside the list, 0 past its end."""
    inside = ranks < list_size
    return torch.where(inside, 1.0 / torch.log2(ranks.clamp(max=list_size).float() + 2.0),
                       torch.zeros((), device=ranks.device))


def gain_weights(gains: Tensor, valid: Tensor, ranks: Tensor, list_size: int, mode: str) -> Tensor:
    """[B, C] weight of every positive (0 elsewhere): the gain of moving it to the top."""
    positive = valid & (gains > 0)
    if mode == "none":
        return positive.float()
    weights = torch.where(positive, gains * (discounts(torch.zeros_like(ranks), list_size)
                                             - discounts(ranks, list_size)), 0.0)
    if mode == "ndcg":
        ideal_gains = torch.where(valid, gains, 0.0).sort(dim=-1, descending=True).values
        positions = torch.arange(gains.shape[-1], device=gains.device)
        ideal = (ideal_gains * discounts(positions, list_size)).sum(-1, keepdim=True)
        weights = weights / ideal.clamp(min=torch.finfo(weights.dtype).tiny)
    elif mode != "dcg":
        raise ValueError(f"unknown gain weighting {mode!r}: use dcg, ndcg or none")
    return weights


def preference_losses(s: Tensor, gains: Tensor, valid: Tensor, beta: float, kind: str) -> Tensor:
    """[B, C] loss of every positive i (0 elsewhere) against the valid candidates j with
    r_j < r_i. kind "rspo": -log softmax of beta*s over {i} and those j; "dpo": the mean over those j
    of -log sigmoid(beta (s_i - s_j))."""
    logits = beta * s
    positive = valid & (gains > 0)
    worse = valid[:, None, :] & (gains[:, None, :] < gains[:, :, None])  # [B, i, j]
    if kind == "rspo":
        eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)[None]
        members = torch.where(worse | eye, logits[:, None, :], float("-inf"))
        loss = torch.logsumexp(members, dim=-1) - logits
    elif kind == "dpo":
        pairs = -F.logsigmoid(logits[:, :, None] - logits[:, None, :])
        loss = torch.where(worse, pairs, 0.0).sum(-1) / worse.sum(-1).clamp(min=1)
    else:
        raise ValueError(f"unknown preference loss {kind!r}: use rspo or dpo")
    return torch.where(positive & worse.any(-1), loss, 0.0)


def list_kl(log_pi: Tensor, log_ref: Tensor, valid: Tensor) -> Tensor:
    """[B] KL(pi || pi_ref) with both renormalised over each list's valid candidates."""
    p = torch.log_softmax(log_pi.masked_fill(~valid, float("-inf")), dim=-1)
    q = torch.log_softmax(log_ref.masked_fill(~valid, float("-inf")), dim=-1)
    p, q = torch.where(valid, p, 0.0), torch.where(valid, q, 0.0)
    return torch.where(valid, p.exp() * (p - q), 0.0).sum(-1)


@dataclass
class LossParts:
    total: Tensor
    preference: Tensor
    kl: Tensor


def rspo_objective(log_pi: Tensor, log_ref: Tensor, gains: Tensor, valid: Tensor, ranks: Tensor,
                   config: RspoConfig) -> LossParts:
    """The batch loss: gain-weighted preference losses summed per list, averaged over lists, plus
    kl_weight times the mean list KL."""
    s = log_pi - log_ref
    weights = gain_weights(gains, valid, ranks, config.gain_cutoff or config.candidates, config.gain)
    preference = (weights * preference_losses(s, gains, valid, config.beta, config.loss)).sum(-1).mean()
    kl = list_kl(log_pi, log_ref, valid).mean()
    return LossParts(preference + config.kl_weight * kl, preference.detach(), kl.detach())


# -- requests and their candidate lists ----------------------------------------------------------


@dataclass
class Requests:
    """Contexts to fine-tune on, each with the items whose reward is known."""

    recent: np.ndarray  # [n, R] item rows, most recent first, PAD_ITEM after the history
    lengths: np.ndarray  # [n]
    items: np.ndarray  # [n, P] item rows with a known reward, -1 padding
    rewards: np.ndarray  # [n, P] their raw rewards (values); 0 = shown, no reward
    times: np.ndarray  # [n] datetime64[ns] of the request

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, index: np.ndarray) -> Requests:
        return Requests(self.recent[index], self.lengths[index], self.items[index], self.rewards[index],
                        self.times[index])

    @classmethod
    def from_examples(cls, examples: ExampleSet, window: int = 1) -> Requests:
        """Offline: the next `window` items of the user are the positives, each rewarded with its
        value. Examples are time-ordered runs per user (training_examples keeps each user's latest
        positions), so example k + j holds the item j steps after example k's target; a window
        never reaches past the user's last training item."""
        count = len(examples)
        items = np.full((count, window), PAD_ITEM, dtype=np.int64)
        rewards = np.zeros((count, window), dtype=np.float64)
        for ahead in range(window):
            later = np.arange(count) + ahead
            inside = later < count
            same = np.zeros(count, dtype=bool)
            same[inside] = examples.users[later[inside]] == examples.users[inside]
            items[same, ahead] = examples.targets[later[same]]
            rewards[same, ahead] = examples.values[later[same]]
        return cls(examples.recent, examples.lengths, items, rewards, examples.cutoffs)


def transform_rewards(rewards: np.ndarray, transform: str) -> np.ndarray:
    """Rewards on the same scale as VSL's weights (rspo.reward_transform)."""
    return transform_values(rewards, transform)


def gain_scale(values: np.ndarray, transform: str) -> float:
    """The mean transformed value of the training targets: gains are divided by it (as VSL's
    weights are), so a mean positive has gain 1 whatever the currency of the values."""
    mean = float(transform_rewards(values, transform).mean()) if len(values) else 0.0
    return mean if math.isfinite(mean) and mean > 0 else 1.0


@dataclass
class CandidateLists:
    items: Tensor  # [B, C] item rows (-1 where invalid)
    gains: Tensor  # [B, C]
    valid: Tensor  # [B, C]
    ranks: Tensor  # [B, C] position in the policy's list; `candidates` for teacher-forced extras


def candidate_lists(policy: SidDecoder, recent: Tensor, tables: TrieTables, extras: Tensor, gains: Tensor,
                    config: RspoConfig, include_extras: bool = True) -> CandidateLists:
    """The policy's beam list plus, with include_extras, the known items it missed as extra slots.
    A rewarded item found by the beam gives its gain to that slot; its extra slot is masked."""
    with torch.inference_mode():
        found = beam_search(policy, policy.embed_context(recent), tables, config.beam_widths,
                            config.candidates).items
    beam = found.clone()  # out of inference mode: the rows index embeddings that autograd records
    size = beam.shape[1]
    match = (beam[:, :, None] == extras[:, None, :]) & (extras[:, None, :] >= 0)  # [B, n, P]
    beam_gains = torch.where(match, gains[:, None, :], 0.0).amax(-1) if extras.shape[1] else \
        torch.zeros_like(beam, dtype=gains.dtype)
    earlier = torch.ones(extras.shape[1], extras.shape[1], dtype=torch.bool, device=extras.device).tril(-1)
    repeated = ((extras[:, :, None] == extras[:, None, :]) & earlier[None]).any(-1)
    extra_valid = (extras >= 0) & ~match.any(1) & ~repeated & include_extras
    return CandidateLists(
        items=torch.cat([beam, extras.masked_fill(~extra_valid, PAD_ITEM)], dim=1),
        gains=torch.cat([beam_gains, torch.where(extra_valid, gains, 0.0)], dim=1),
        valid=torch.cat([beam >= 0, extra_valid], dim=1),
        ranks=torch.cat([torch.arange(size, device=beam.device).expand_as(beam),
                         torch.full_like(extras, config.candidates)], dim=1),
    )


def sequence_log_probs(decoder: SidDecoder, recent: Tensor, items: Tensor) -> Tensor:
    """log p(ID of items[b, c] | context b), [B, C], differentiable. The decoding path: the context
    goes through the layers once per request and every candidate is a beam teacher-forced through
    the per-beam layers (for LazyAR only the top M), which is N/M times cheaper per candidate than
    the full pass of `code_log_probs` and equal to it (tests/test_rspo.py holds them)."""
    batch, width = items.shape
    codes = decoder.item_codes[items.clamp(min=0)]  # [B, C, L]
    state = decoder.start(decoder.embed_context(recent))
    total = torch.zeros(batch, width, device=items.device)
    previous: Tensor | None = None
    for level in range(decoder.levels):
        log_probs = decoder.step(state, level, previous)  # [B, 1 at level 0 else C, K_level]
        total = total + log_probs.expand(batch, width, -1).gather(-1, codes[..., level, None]).squeeze(-1)
        if level == 0:  # one shared level-0 cache becomes one per candidate
            state.reorder(torch.zeros(batch, width, dtype=torch.long, device=items.device))
        previous = codes[..., level]
    return total


# -- the trainer -------------------------------------------------------------------------------


@dataclass
class StepStats:
    loss: float
    preference: float
    kl: float
    # Share of the lists whose beam held a positive (before the teacher-forced extras).
    positive_in_beam: float


class RspoTrainer:
    """Policy + frozen reference + AdamW; one `step` per batch of requests."""

    def __init__(self, policy: SidDecoder, reference: SidDecoder, config: RspoConfig, scale: float,
                 state: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                 include_extras: bool = True) -> None:
        self.config = config
        self.include_extras = include_extras
        self.scale = scale
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.tables = TrieTables(_trie_of(policy), self.device)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay, betas=ADAM_BETAS)
        self.steps = 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.steps = int(state["steps"])
            for group in self.optimizer.param_groups:  # the config of this run, not the saved one
                group["lr"], group["weight_decay"] = config.lr, config.weight_decay

    def step(self, requests: Requests) -> StepStats:
        longest = max(1, int(requests.lengths.max()))
        recent = torch.as_tensor(requests.recent[:, :longest], device=self.device)
        extras = torch.as_tensor(requests.items, dtype=torch.long, device=self.device)
        scaled = transform_rewards(requests.rewards, self.config.reward_transform) / self.scale
        gains = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)
        lists = candidate_lists(self.policy, recent, self.tables, extras, gains, self.config,
                                self.include_extras)
        with torch.no_grad():
            log_ref = sequence_log_probs(self.reference, recent, lists.items)
        log_pi = sequence_log_probs(self.policy, recent, lists.items)
        parts = rspo_objective(log_pi, log_ref, lists.gains, lists.valid, lists.ranks, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.steps += 1
        in_beam = ((lists.gains[:, :self.config.candidates] > 0).any(-1)).float().mean()
        return StepStats(float(parts.total.detach()), float(parts.preference), float(parts.kl),
                         float(in_beam))

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "gain_scale": self.scale}


def _trie_of(decoder: SidDecoder) -> Any:
    from genrec.sid.trie import SidTrie

    return SidTrie.from_codes(decoder.item_codes.cpu().numpy(), decoder.level_sizes)


# -- offline fine-tuning on the training split --------------------------------------------------


@dataclass
class RspoResult:
    policy: SidDecoder
    reference_state: dict[str, Tensor]
    trainer_state: dict[str, Any]
    curve: list[dict[str, float]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def reference_decoder(model: TrainedModel, model_dir: str | Path | None = None) -> SidDecoder:
    """pi_ref: the VSL model a chain of RSPO versions started from (kept in each version), else the
    model itself."""
    reference = copy.deepcopy(model.decoder)
    path = Path(model_dir) / REFERENCE_FILE if model_dir is not None else None
    if path is not None and path.is_file():
        reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return reference


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


class TailAverage:
    """Running mean of a module's parameters over the steps from `first_step` on."""

    def __init__(self, module: torch.nn.Module, first_step: int) -> None:
        self.module = module
        self.first_step = first_step
        self.count = 0
        self.mean: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step < self.first_step:
            return
        self.count += 1
        for name, parameter in self.module.named_parameters():
            if name not in self.mean:
                self.mean[name] = parameter.detach().clone()
            else:
                self.mean[name] += (parameter.detach() - self.mean[name]) / self.count

    @torch.no_grad()
    def apply(self) -> None:
        for name, parameter in self.module.named_parameters():
            parameter.copy_(self.mean[name])


def _mean_stats(window: list[StepStats], step: int, seconds: float) -> dict[str, float]:
    return {"step": float(step), "seconds": seconds,
            **{name: float(np.mean([getattr(s, name) for s in window])) if window else float("nan")
               for name in ("loss", "preference", "kl", "positive_in_beam")}}


# -- versioned model folders -------------------------------------------------------------------


def version_number(name: str, config: RspoConfig) -> int | None:
    match = re.fullmatch(re.escape(config.version_prefix) + r"(\d+)", name)
    return int(match.group(1)) if match else None


def next_version_dir(models_dir: str | Path, config: RspoConfig) -> Path:
    """<models_dir>/<prefix><n+1> after the highest existing version (prefix + 1 in an empty one)."""
    models_dir = Path(models_dir)
    numbers = [version_number(p.name, config) for p in models_dir.iterdir()] if models_dir.is_dir() else []
    latest = max((n for n in numbers if n is not None), default=0)
    return models_dir / f"{config.version_prefix}{latest + 1:0{config.version_digits}d}"


def latest_version_dir(models_dir: str | Path, config: RspoConfig) -> Path | None:
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return None
    versions = [(version_number(p.name, config), p) for p in models_dir.iterdir() if p.is_dir()]
    numbered = [(n, p) for n, p in versions if n is not None]
    return max(numbered)[1] if numbered else None


def save_rspo_model(folder: str | Path, result: RspoResult, item_ids: np.ndarray, parent: str | Path | None,
                    pending: pd.DataFrame | None = None) -> Path:
    """The model folder serving loads (model.pt, model.json, items.json) plus what the next update
    needs: pi_ref's weights, the optimiser state and any pending feedback. Written atomically."""
    record = {**result.stats, "curve": result.curve, "parent": str(parent) if parent else None}
    with atomic_path(folder) as tmp:
        save_model(tmp, result.policy, item_ids, extra={"rspo": record})
        torch.save({k: v.detach().cpu() for k, v in result.reference_state.items()}, tmp / REFERENCE_FILE)
        torch.save(result.trainer_state, tmp / STATE_FILE)
        if pending is not None and len(pending):
            pending.to_parquet(tmp / PENDING_FILE, index=False)
    return Path(folder)


def _load_state(model_dir: str | Path | None) -> dict[str, Any] | None:
    if model_dir is None or not (Path(model_dir) / STATE_FILE).is_file():
        return None
    # Our own file: the optimiser state holds plain Python values besides tensors.
    return torch.load(Path(model_dir) / STATE_FILE, map_location="cpu", weights_only=False)


# -- continual mode: feedback logs ----------------------------------------------------------------


def _utc(column: pd.Series, name: str, what: str) -> pd.Series:
    try:
        # "mixed": text may hold several ISO 8601 forms; each value is parsed on its own.
        text = column.dtype == object
        stamps = pd.to_datetime(column, utc=True, format="mixed" if text else None)
    except (ValueError, TypeError) as exc:
        raise FeedbackError(f"{what} column {name!r} holds values that are not times ({exc}): write "
                            "datetimes or ISO 8601 text") from exc
    if stamps.isna().any():
        raise FeedbackError(f"{what} column {name!r} has {int(stamps.isna().sum())} empty times: fill or "
                            "drop those rows")
    return stamps


def validate_feedback(frame: pd.DataFrame, source: str = "feedback log") -> pd.DataFrame:
    """The feedback log with typed columns (user_id, item_id str; timestamp UTC; reward float), or
    a FeedbackError naming the column and the fix."""
    if not len(frame):
        raise FeedbackError(f"{source} is empty: pass a log with at least one impression")
    for name, meaning in FEEDBACK_COLUMNS.items():
        if name not in frame.columns:
            raise FeedbackError(f"{source} lacks column {name!r} ({meaning}); it has "
                                f"{', '.join(map(str, frame.columns))}")
        if name != "timestamp" and frame[name].isna().any():
            raise FeedbackError(f"{source} column {name!r} has {int(frame[name].isna().sum())} empty values: "
                                f"fill or drop those rows ({meaning})")
    out = frame[list(FEEDBACK_COLUMNS)].copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["timestamp"] = _utc(out["timestamp"], "timestamp", source)
    reward = pd.to_numeric(out["reward"], errors="coerce")
    bad = reward.isna() | ~np.isfinite(reward.fillna(0.0)) | (reward < 0)
    if bad.any():
        example = out.loc[bad, "reward"].iloc[0]
        raise FeedbackError(f"{source} column 'reward' has {int(bad.sum())} values that are not finite "
                            f"numbers >= 0 (e.g. {example!r}): use 0 for an impression without conversion")
    out["reward"] = reward.astype(float)
    return out


def validate_history(frame: pd.DataFrame, source: str = "history log") -> pd.DataFrame:
    for name in HISTORY_COLUMNS:
        if name not in frame.columns:
            raise FeedbackError(f"{source} lacks column {name!r}: pass the interaction log (user_id, "
                                "item_id, timestamp), e.g. the splits parquet")
    out = frame[list(HISTORY_COLUMNS)].copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["timestamp"] = _utc(out["timestamp"], "timestamp", source)
    return out


def _ordered(feedback: pd.DataFrame) -> pd.DataFrame:
    """Time order, ties by user then item: the one order every way of slicing the log agrees on."""
    return feedback.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def feedback_requests(feedback: pd.DataFrame, history: pd.DataFrame, item_ids: np.ndarray,
                      recent_items: int) -> tuple[Requests, np.ndarray]:
    """One request per (user_id, timestamp) of a time-ordered log, and each row's request index.
    The context is the user's history strictly before the request time, most recent first."""
    keys = feedback["user_id"] + "\x00" + feedback["timestamp"].astype("int64").astype(str)
    request_of, _ = pd.factorize(keys)
    count = int(request_of.max()) + 1 if len(request_of) else 0
    rows = item_rows(feedback["item_id"], item_ids)
    width = int(np.bincount(request_of).max()) if count else 1
    items = np.full((count, width), PAD_ITEM, dtype=np.int64)
    rewards = np.zeros((count, width), dtype=np.float64)
    slot = feedback.groupby(request_of, sort=False).cumcount().to_numpy()
    items[request_of, slot] = rows
    rewards[request_of, slot] = feedback["reward"].to_numpy(float)
    first = np.unique(request_of, return_index=True)[1]
    users = feedback["user_id"].to_numpy()[first]
    times = feedback["timestamp"].dt.tz_localize(None).to_numpy("datetime64[ns]")[first]

    known = history.assign(row=item_rows(history["item_id"], item_ids))
    known = known[known["row"] >= 0].sort_values(["user_id", "timestamp"], kind="stable")
    by_user = {user: (group["timestamp"].dt.tz_localize(None).to_numpy("datetime64[ns]"),
                      group["row"].to_numpy()) for user, group in known.groupby("user_id", sort=False)}
    recent = np.full((count, recent_items), PAD_ITEM, dtype=np.int64)
    lengths = np.zeros(count, dtype=np.int64)
    for index, (user, when) in enumerate(zip(users, times)):
        stamps, item_list = by_user.get(user, (np.empty(0, "datetime64[ns]"), np.empty(0, np.int64)))
        before = item_list[:np.searchsorted(stamps, when, side="left")][-recent_items:][::-1]
        recent[index, :len(before)] = before
        lengths[index] = len(before)
    return Requests(recent, lengths, items, rewards, times), request_of


@dataclass
class UpdateResult:
    folder: Path
    trained_requests: int
    pending_requests: int
    dropped_rows: int
    steps: int


def continual_update(config: GenrecConfig, model_dir: str | Path, feedback: pd.DataFrame,
                     history: pd.DataFrame, models_dir: str | Path | None = None,
                     log: Callable[[str], None] = print,
                     on_step: Callable[[int, int], None] | None = None) -> UpdateResult:
    """One continual update: the model at `model_dir` (read only) + a feedback log -> a new version
    folder in `models_dir` (default: beside `model_dir`)."""
    rspo = config.rspo
    if rspo.threads:
        torch.set_num_threads(rspo.threads)
    torch.manual_seed(rspo.seed)
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    feedback = validate_feedback(feedback)
    # Gains are scaled once per chain of versions: by the saved scale, else by the history's values
    # (the VSL training data's, when the history is the splits), else not at all.
    values = pd.to_numeric(history["value"], errors="coerce").dropna() if "value" in history else pd.Series()
    history = validate_history(history)
    saved = _load_state(model_dir)
    scale = float(saved["gain_scale"]) if saved else gain_scale(values.to_numpy(float), rspo.reward_transform)
    last = pd.Timestamp(saved["last_time"]) if saved and saved.get("last_time") is not None else None
    if last is not None and (feedback["timestamp"] < last).any():
        first = feedback["timestamp"].min()
        raise FeedbackError(f"feedback log has events from {first} but {model_dir} already learnt from "
                            f"events up to {last}: pass only newer feedback (time order)")
    known = item_rows(feedback["item_id"], model.item_ids) >= 0
    dropped = int((~known).sum())
    if dropped:
        log(f"{dropped} feedback rows name items without a semantic ID in this model; they are left out "
            "until the codebook is rebuilt")
    feedback = feedback[known]
    if (model_dir / PENDING_FILE).is_file():
        pending = validate_feedback(pd.read_parquet(model_dir / PENDING_FILE), "pending feedback")
        feedback = pd.concat([pending, feedback], ignore_index=True)
    if not len(feedback):
        raise FeedbackError("no feedback row names an item this model knows: check the item_id column")
    feedback = _ordered(feedback)
    requests, request_of = feedback_requests(feedback, history, model.item_ids,
                                             model.decoder.config.recent_items)
    trained = len(requests) // rspo.batch_size * rspo.batch_size
    trainer = RspoTrainer(copy.deepcopy(model.decoder), reference_decoder(model, model_dir), rspo, scale,
                          saved, model.decoder.item_codes.device)
    total = trained // rspo.batch_size
    log(f"continual rspo: {len(requests)} requests, {total} steps of {rspo.batch_size}; "
        f"{len(requests) - trained} requests wait for the next update")
    started = time.perf_counter()
    curve, window = [], []
    for step, start in enumerate(range(0, trained, rspo.batch_size), 1):
        window.append(trainer.step(requests.subset(np.arange(start, start + rspo.batch_size))))
        if on_step is not None:
            on_step(step, total)
        if step % rspo.log_every == 0 or step == total:
            curve.append(_mean_stats(window, step, time.perf_counter() - started))
            window = []
    state = trainer.state()
    state["last_time"] = (pd.Timestamp(requests.times[trained - 1], tz="UTC") if trained else last)
    pending = feedback[request_of >= trained]
    stats = {"mode": "continual", "loss": rspo.loss, "steps": total, "trained_requests": trained,
             "pending_requests": len(requests) - trained, "dropped_rows": dropped,
             "train_seconds": time.perf_counter() - started, "config": dataclasses.asdict(rspo)}
    result = RspoResult(trainer.policy, trainer.reference.state_dict(), state, curve, stats)
    folder = next_version_dir(models_dir if models_dir is not None else model_dir.parent, rspo)
    save_rspo_model(folder, result, model.item_ids, model_dir, pending)
    log(f"wrote {folder} ({total} steps; served model {model_dir} untouched)")
    return UpdateResult(folder, trained, len(requests) - trained, dropped, total)
