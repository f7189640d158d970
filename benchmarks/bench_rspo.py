"""RSPO against its VSL starting point and the pairwise-DPO ablation, evaluated in one run:
Recall/NDCG/Value@10 on the TEST target of ALL users (history train + valid, full catalogue).
RSPO and DPO learn only from training rows. Writes benchmarks/results/rspo_<dataset>[_<tag>].json
and a PNG.

    python -m benchmarks.bench_rspo --datasets beauty --config configs/recipes/rspo_beauty.yaml --tag avg

The headline recipes and their commands are in configs/recipes/rspo_*.yaml; what they measured, and
why the defaults are what they are, is in docs/rspo.md and benchmarks/README.md.

Modes:
- default: VSL, VSL+RSPO and VSL+DPO on test, RSPO and DPO once per `--seeds` seed, averaged, with a
  paired bootstrap over users;
- `--origins 0 2 3 ...`: the same comparison at several split origins, pooled. Origin k leaves each
  user's latest k interactions out before the split, so its test target is the item k places before
  the last. Each origin gets its own codebook, VSL model (--allow-train) and fine-tunes;
- `--sweep`: tries RSPO settings (each a comma-separated list of overrides) and records their
  VALIDATION figures: settings are picked on validation, never on test. With `--origins 2 3 ...`,
  each variant's validation change is pooled over those origins, whose targets no earlier choice used.

The VSL models are the ones bench_quality trains (same recipes, same cache); a missing one is an
error unless --allow-train is given, since Beauty's takes over half an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.common import (
    DATASETS,
    RSPO_TARGET_NDCG_LOSS,
    RSPO_TARGET_VALUE_GAIN,
    SHARED,
    Prepared,
    Recipe,
    add_config_arguments,
    cached_model,
    load_average,
    paired_bootstrap,
    prepare,
)
from benchmarks.harness import save_result
from genrec.config import GenrecConfig
from genrec.evaluate import hit_ranks, ranking_metrics, recommend, user_terms
from genrec.model.artefact import TrainedModel
from genrec.train.data import evaluation_requests
from genrec.train.rspo import finetune

HEADLINE = ("recall@10", "ndcg@10", "value@10")
BOOTSTRAPPED = ("value@10", "ndcg@10")
CUTOFF = 10
KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "value@5", "value@10", "coverage@10")
TARGET_VALUE_GAIN = RSPO_TARGET_VALUE_GAIN
TARGET_NDCG_LOSS = RSPO_TARGET_NDCG_LOSS


def _tuned(model: TrainedModel, config: GenrecConfig, prepared: Prepared
           ) -> tuple[TrainedModel, dict[str, Any]]:
    prefix = f"[{prepared.name} {config.rspo.loss}] "
    result = finetune(config, prepared.splits, model, log=lambda line: print(prefix + line, flush=True))
    tuned = TrainedModel(result.policy, model.item_ids, model.manifest)
    return tuned, {**result.stats, "curve": result.curve}


def _scored(model: TrainedModel, prepared: Prepared, config: GenrecConfig, split: str = "test"
            ) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
    """genrec.evaluate's figures on a split's targets (all users, full catalogue), each user's @10
    terms, for the paired bootstrap, and the users they belong to."""
    recent = model.decoder.config.recent_items
    requests = evaluation_requests(prepared.splits, model.item_ids, recent, split)
    items, _ = recommend(model.decoder, requests, model.tables, config.train.beam_widths,
                         config.train.top_k, config.train.eval_batch_size)
    figures = ranking_metrics(items, requests.targets, requests.values, model.decoder.item_codes.shape[0])
    return (figures, user_terms(hit_ranks(items, requests.targets), requests.values, CUTOFF),
            np.asarray(requests.users, dtype=str))


def _relative(new: float, old: float) -> float:
    return new / old - 1.0 if old else float("nan")


@dataclasses.dataclass
class Measured:
    """VSL, VSL+RSPO and VSL+DPO on one split's test targets: figures averaged over the seeds, and
    each user's @10 terms (VSL's; RSPO's and DPO's per seed)."""

    tested: dict[str, dict[str, float]]
    per_seed: dict[str, list[dict[str, float]]]
    vsl_users: dict[str, np.ndarray]
    terms_by_label: dict[str, list[dict[str, np.ndarray]]]
    users: np.ndarray
    runs: dict[str, dict[str, Any]]

    def terms(self, label: str, metric: str) -> np.ndarray:
        """Each user's term of `metric`: VSL's, or the mean over seeds of a fine-tune's."""
        if label == "VSL":
            return self.vsl_users[metric]
        return np.mean([terms[metric] for terms in self.terms_by_label[label]], axis=0)


def measure(name: str, config: GenrecConfig, prepared: Prepared, vsl_model: TrainedModel,
            seeds: list[int]) -> Measured:
    """RSPO and DPO once per seed from `vsl_model`, each tested beside it on the same users."""
    vsl, vsl_users, users = _scored(vsl_model, prepared, config)
    terms_by_label: dict[str, list[dict[str, np.ndarray]]] = {"VSL+RSPO": [], "VSL+DPO": []}
    runs: dict[str, dict[str, Any]] = {}
    tested: dict[str, dict[str, float]] = {"VSL": vsl}
    per_seed: dict[str, list[dict[str, float]]] = {"VSL+RSPO": [], "VSL+DPO": []}
    for seed in seeds:
        for loss, label in (("rspo", "VSL+RSPO"), ("dpo", "VSL+DPO")):
            run = config.with_overrides([f"rspo.loss={loss}", f"rspo.seed={seed}"])
            tuned, stats = _tuned(vsl_model, run, prepared)
            figs, user_figs, _ = _scored(tuned, prepared, run)
            terms_by_label[label].append(user_figs)
            per_seed[label].append({"seed": seed, **{k: figs[k] for k in KEYS}})
            runs[f"{label} seed {seed}"] = stats
            print(f"[{name}] {label} seed {seed}: " + " ".join(f"{k} {figs[k]:.4f}" for k in HEADLINE),
                  flush=True)
    for label, rows in per_seed.items():
        tested[label] = {k: float(np.mean([row[k] for row in rows])) for k in KEYS}
    return Measured(tested, per_seed, vsl_users, terms_by_label, users, runs)


def compare(recipe: Recipe, allow_train: bool, seeds: list[int], tag: str = "") -> None:
    """VSL, VSL+RSPO and VSL+DPO on test; RSPO and DPO once per seed, their figures averaged."""
    name = recipe.dataset
    config = recipe.config()
    started_load = load_average()
    prepared = prepare(name, config)
    vsl_model = cached_model(prepared, config, allow_train)
    seeds = seeds or [config.rspo.seed]
    measured = measure(name, config, prepared, vsl_model, seeds)
    tested, per_seed, terms_by_label, runs = (measured.tested, measured.per_seed, measured.terms_by_label,
                                              measured.runs)
    vsl = tested["VSL"]
    figures: dict[str, Any] = {
        "dataset": DATASETS[name],
        "protocol": "leave-one-out; test target of all users; history train+valid; full catalogue; "
                    "RSPO/DPO trained on train rows only",
        "test": {label: {k: figs[k] for k in KEYS} for label, figs in tested.items()},
        "test_per_seed": per_seed,
        # Users are few and values heavy-tailed: this is how far each figure moves by chance.
        **{f"{metric}_change_bootstrap_95": {
            label: paired_bootstrap(measured.terms(label, metric), measured.terms("VSL", metric),
                                    config.rspo.seed)
            for label in terms_by_label} for metric in BOOTSTRAPPED},
        "rspo_seeds": seeds,
        "relative_to_vsl": {label: {k: _relative(figs[k], vsl[k]) for k in HEADLINE}
                            for label, figs in tested.items() if label != "VSL"},
        "target": {"value@10_gain_at_least": TARGET_VALUE_GAIN,
                   "ndcg@10_loss_at_most": TARGET_NDCG_LOSS},
        "target_met": {label: _relative(figs["value@10"], vsl["value@10"]) >= TARGET_VALUE_GAIN
                       and _relative(figs["ndcg@10"], vsl["ndcg@10"]) >= -TARGET_NDCG_LOSS
                       for label, figs in tested.items() if label != "VSL"},
        "runs": {label: {k: v for k, v in stats.items() if k != "config"} for label, stats in runs.items()},
        "rspo_config": dataclasses.asdict(config.rspo),
        "seeds": {"rspo": seeds, "vsl_train": config.train.seed, "sid": config.sid.seed,
                  "bids": config.bids.seed},
        "vsl_model": {"train_minutes": vsl_model.manifest["training"]["train_seconds"] / 60,
                      "finished": vsl_model.manifest["training"]["finished"]},
        "value_source": prepared.value_source,
        **recipe.record(),
        "load_average_start_end": [started_load, load_average()],
        "torch_threads": torch.get_num_threads(),
    }

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
        colours = ["#999", "#36c", "#c63"]
        for ax, metric in zip(axes, HEADLINE):
            labels = list(tested)
            ax.bar(labels, [tested[label][metric] for label in labels], color=colours)
            ax.set_title(f"{DATASETS[name]} test {metric}")
            ax.tick_params(axis="x", labelsize=8)
        fig.suptitle(f"RSPO/DPO beta {config.rspo.beta}, KL {config.rspo.kl_weight}, mean of seeds {seeds}")
        fig.tight_layout()
        return fig

    save_result(f"rspo_{name}" + (f"_{tag}" if tag else ""), figures, plot)


def _per_user_totals(terms: list[tuple[np.ndarray, np.ndarray]], users: np.ndarray) -> np.ndarray:
    """Each of `users`' terms summed over the origins ((user ids, terms) per origin); 0 where a user
    has no target at an origin."""
    index = {user: i for i, user in enumerate(users)}
    totals = np.zeros(len(users))
    for ids, values in terms:
        np.add.at(totals, [index[user] for user in ids], values)
    return totals


def origins(recipe: Recipe, origin_list: list[int], allow_train: bool, seeds: list[int],
            tag: str = "") -> None:
    """The comparison of `compare` at several split origins: origin k leaves each user's latest k
    interactions out before the leave-one-out split, so its test target is the item k places before
    the last, with its own VSL model (trained if missing, with --allow-train) and fine-tunes. The
    pooled change is over every (origin, user) test target; its bootstrap resamples users, each with
    all their origins, since one user's targets are not independent."""
    name = recipe.dataset
    config = recipe.config()
    started_load = load_average()
    seeds = seeds or [config.rspo.seed]
    measured: dict[int, Measured] = {}
    for origin in origin_list:
        print(f"[{name}] origin {origin}: each user's latest {origin} interactions left out", flush=True)
        prepared = prepare(name, config, origin)
        vsl_model = cached_model(prepared, config, allow_train)
        measured[origin] = measure(name, config, prepared, vsl_model, seeds)
    labels = ("VSL+RSPO", "VSL+DPO")
    all_users = np.unique(np.concatenate([m.users for m in measured.values()]))

    def totals(metric: str, label: str) -> np.ndarray:
        return _per_user_totals([(m.users, m.terms(label, metric)) for m in measured.values()], all_users)

    targets = sum(len(m.users) for m in measured.values())
    pooled = {label: {metric: float(totals(metric, label).sum() / targets) for metric in HEADLINE}
              for label in ("VSL", *labels)}
    relative = {label: {k: _relative(pooled[label][k], pooled["VSL"][k]) for k in HEADLINE}
                for label in labels}
    figures: dict[str, Any] = {
        "dataset": DATASETS[name],
        "protocol": "leave-one-out at several origins (origin k: each user's latest k interactions left out "
                    "first); test target of all users at each; history train+valid; full catalogue; "
                    "RSPO/DPO trained on each origin's train rows only",
        "origins": origin_list,
        "test_targets": targets,
        "users": len(all_users),
        "pooled": pooled,
        "pooled_relative_to_vsl": relative,
        **{f"pooled_{metric}_change_bootstrap_95": {
            label: paired_bootstrap(totals(metric, label), totals(metric, "VSL"), config.rspo.seed)
            for label in labels} for metric in BOOTSTRAPPED},
        "target": {"value@10_gain_at_least": TARGET_VALUE_GAIN, "ndcg@10_loss_at_most": TARGET_NDCG_LOSS},
        "pooled_target_met": {label: relative[label]["value@10"] >= TARGET_VALUE_GAIN
                              and relative[label]["ndcg@10"] >= -TARGET_NDCG_LOSS for label in labels},
        "per_origin": {str(origin): {
            "test": {label: {k: figs[k] for k in KEYS} for label, figs in m.tested.items()},
            "test_per_seed": m.per_seed,
            "relative_to_vsl": {label: {k: _relative(m.tested[label][k], m.tested["VSL"][k])
                                        for k in HEADLINE} for label in labels},
            **{f"{metric}_change_bootstrap_95": {
                label: paired_bootstrap(m.terms(label, metric), m.terms("VSL", metric), config.rspo.seed)
                for label in labels}
               for metric in BOOTSTRAPPED},
            "runs": {label: {k: v for k, v in stats.items() if k not in ("config", "curve")}
                     for label, stats in m.runs.items()},
        } for origin, m in measured.items()},
        "rspo_seeds": seeds,
        "rspo_config": dataclasses.asdict(config.rspo),
        "seeds": {"rspo": seeds, "vsl_train": config.train.seed, "sid": config.sid.seed,
                  "bids": config.bids.seed},
        **recipe.record(),
        "load_average_start_end": [started_load, load_average()],
        "torch_threads": torch.get_num_threads(),
    }

    def plot() -> plt.Figure:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        names = [f"origin {o}" for o in origin_list] + ["pooled"]
        for ax, metric in zip(axes, BOOTSTRAPPED):
            for offset, label, colour in ((-0.2, "VSL+RSPO", "#36c"), (0.2, "VSL+DPO", "#c63")):
                changes = [100 * figures["per_origin"][str(o)]["relative_to_vsl"][label][metric]
                           for o in origin_list] + [100 * relative[label][metric]]
                low, high = figures[f"pooled_{metric}_change_bootstrap_95"][label]
                errors = [[0] * len(origin_list) + [changes[-1] - 100 * low],
                          [0] * len(origin_list) + [100 * high - changes[-1]]]
                ax.bar(np.arange(len(names)) + offset, changes, 0.4, yerr=errors, color=colour, label=label)
            ax.axhline(100 * (TARGET_VALUE_GAIN if metric == "value@10" else -TARGET_NDCG_LOSS),
                       color="#666", linestyle="--", linewidth=1, label="target")
            ax.set_xticks(np.arange(len(names)), names, fontsize=8)
            ax.set_ylabel(f"test {metric} change vs VSL (%)")
            ax.legend(fontsize=7)
        fig.suptitle(f"{DATASETS[name]}: {targets} test targets over origins {origin_list}, seeds {seeds} "
                     "(pooled 95% bootstrap over users)")
        fig.tight_layout()
        return fig

    save_result(f"rspo_{name}_origins" + (f"_{tag}" if tag else ""), figures, plot)


def sweep(recipe: Recipe, variants: list[str], allow_train: bool, tag: str = "") -> None:
    """RSPO only, one run per variant; validation figures (all users) for picking settings. The
    result is rewritten after every variant, so a long sweep that is stopped keeps what it measured."""
    name = recipe.dataset
    config = recipe.config()
    prepared = prepare(name, config)
    vsl_model = cached_model(prepared, config, allow_train)
    rows: list[dict[str, Any]] = [{"variant": "VSL", **{k: v for k, v in _scored(
        vsl_model, prepared, config, "valid")[0].items() if k in KEYS}}]
    print(rows[-1], flush=True)

    def plot() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(7, 4))
        for row in rows:
            ax.scatter(row["ndcg@10"], row["value@10"], label=row["variant"])
        ax.set_xlabel("valid NDCG@10 (all users)")
        ax.set_ylabel("valid Value@10")
        ax.legend(fontsize=6)
        return fig

    for variant in variants:
        run = config.with_overrides([v for v in variant.split(",") if v])
        tuned, stats = _tuned(vsl_model, run, prepared)
        figures, _, _ = _scored(tuned, prepared, run, "valid")
        rows.append({"variant": variant, **{k: figures[k] for k in KEYS},
                     "relative_to_vsl": {k: _relative(figures[k], rows[0][k]) for k in HEADLINE},
                     "steps": stats["steps"], "train_seconds": stats["train_seconds"]})
        print(rows[-1], flush=True)
        save_result(f"rspo_sweep_{name}" + (f"_{tag}" if tag else ""),
                    {"dataset": DATASETS[name], "split": "valid (all users)", "rows": rows,
                     **recipe.record()}, plot)


def sweep_origins(recipe: Recipe, variants: list[str], origin_list: list[int],
                  allow_train: bool, tag: str = "") -> None:
    """`sweep` at several origins: each variant's VALIDATION change, pooled over every (origin,
    user) validation target, with its bootstrap over users. Origin k's validation target is the
    item k+1 places before the last, so origins 2.. pick settings on targets that origin 0's
    validation (where the earlier sweeps picked) and test never score."""
    name = recipe.dataset
    config = recipe.config()
    prepared_at = {origin: prepare(name, config, origin) for origin in origin_list}
    models = {origin: cached_model(prepared_at[origin], config, allow_train) for origin in origin_list}
    baseline = {origin: _scored(models[origin], prepared_at[origin], config, "valid")
                for origin in origin_list}
    all_users = np.unique(np.concatenate([users for _, _, users in baseline.values()]))

    def totals(per_origin: dict[int, tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]],
               metric: str) -> np.ndarray:
        return _per_user_totals([(users, terms[metric]) for _, terms, users in per_origin.values()],
                                all_users)

    targets = sum(len(users) for _, _, users in baseline.values())
    vsl = {metric: float(totals(baseline, metric).sum() / targets) for metric in HEADLINE}
    rows: list[dict[str, Any]] = [{"variant": "VSL", **vsl}]

    def plot() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(7, 4))
        for row in rows[1:]:
            ax.scatter(100 * row["relative_to_vsl"]["ndcg@10"], 100 * row["relative_to_vsl"]["value@10"],
                       label=row["variant"])
        ax.axhline(100 * TARGET_VALUE_GAIN, color="#666", linestyle="--", linewidth=1)
        ax.axvline(-100 * TARGET_NDCG_LOSS, color="#666", linestyle="--", linewidth=1)
        ax.set_xlabel(f"valid NDCG@10 change vs VSL (%), pooled over origins {origin_list}")
        ax.set_ylabel("valid Value@10 change vs VSL (%)")
        ax.legend(fontsize=6)
        return fig

    for variant in variants:
        run = config.with_overrides([v for v in variant.split(",") if v])
        tuned = {}
        for origin in origin_list:
            model, _ = _tuned(models[origin], run, prepared_at[origin])
            tuned[origin] = _scored(model, prepared_at[origin], run, "valid")
        pooled = {metric: float(totals(tuned, metric).sum() / targets) for metric in HEADLINE}
        rows.append({"variant": variant, **pooled,
                     "relative_to_vsl": {k: _relative(pooled[k], vsl[k]) for k in HEADLINE},
                     **{f"{metric}_change_bootstrap_95": paired_bootstrap(
                         totals(tuned, metric), totals(baseline, metric), config.rspo.seed)
                        for metric in BOOTSTRAPPED},
                     "per_origin": {str(origin): {k: _relative(figs[k], baseline[origin][0][k])
                                                  for k in HEADLINE}
                                    for origin, (figs, _, _) in tuned.items()}})
        print(rows[-1], flush=True)
        save_result(f"rspo_sweep_{name}_origins" + (f"_{tag}" if tag else ""),
                    {"dataset": DATASETS[name],
                     "split": f"valid (all users) at origins {origin_list}, pooled",
                     "validation_targets": targets, "rows": rows, **recipe.record()}, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["movielens", "beauty"], choices=sorted(DATASETS))
    add_config_arguments(parser)
    parser.add_argument("--sweep", nargs="+", default=[], metavar="OVERRIDES",
                        help="RSPO variants, each 'rspo.beta=2,rspo.kl_weight=0.05': validation only")
    parser.add_argument("--seeds", nargs="+", type=int, default=[],
                        help="RSPO/DPO seeds (example order); figures are their mean (default: rspo.seed)")
    parser.add_argument("--tag", default="", help="suffix of the result name (rspo_<dataset>_<tag>.json): "
                        "a variant that must not replace the reference figures")
    parser.add_argument("--origins", nargs="+", type=int, default=[], metavar="K",
                        help="test at these split origins too (K: each user's latest K interactions left "
                        "out first) and pool them: rspo_<dataset>_origins.json")
    parser.add_argument("--allow-train", action="store_true", help="train a missing VSL model into the cache")
    args = parser.parse_args()
    if any(origin < 0 for origin in args.origins):
        parser.error(f"--origins must be >= 0 (interactions left out per user), got {args.origins}")
    for name in args.datasets:
        if name != "movielens" and not SHARED.is_dir():
            print(f"skipping {name}: {SHARED} is absent")
            continue
        if args.sweep and args.origins:
            sweep_origins(Recipe.from_args(name, args), args.sweep, args.origins, args.allow_train, args.tag)
        elif args.sweep:
            sweep(Recipe.from_args(name, args), args.sweep, args.allow_train, args.tag)
        elif args.origins:
            origins(Recipe.from_args(name, args), args.origins, args.allow_train, args.seeds, args.tag)
        else:
            compare(Recipe.from_args(name, args), args.allow_train, args.seeds, args.tag)


if __name__ == "__main__":
    main()
