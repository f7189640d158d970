"""The benchmark record: the command relative to the repository, and the commit it ran from."""

from __future__ import annotations

import json
import subprocess

from benchmarks.harness import REPO, command_line, git_state, save_result


def test_command_is_relative_to_the_repository() -> None:
    assert command_line([str(REPO / "benchmarks" / "bench_attack.py"), "--scale", "0.5", "a b"]) == \
        "python -m benchmarks.bench_attack --scale 0.5 'a b'"
    assert command_line([str(REPO / "pipelines" / "run.py"), "--x"]) == "python pipelines/run.py --x"
    assert command_line(["/somewhere/else/tool.py", "--y"]) == "python tool.py --y"
    assert str(REPO) not in command_line([str(REPO / "benchmarks" / "bench_x.py"), "--out", "rel"])
    # Paths in the checkout or beside it (the shared data) are written from the repository root;
    # scratch folders elsewhere stay as given.
    assert command_line([str(REPO / "benchmarks" / "bench_x.py"), "--shared-data", str(REPO.parent / "shared" / "data"),
                         f"--out={REPO / 'runs' / 'x'}", "--work", "/nonexistent-scratch/scale"]) == \
        "python -m benchmarks.bench_x --shared-data ../shared/data --out=runs/x --work /nonexistent-scratch/scale"


def test_record_names_the_commit_and_a_dirty_tree(tmp_path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    state = git_state()
    assert state["commit"] == head and isinstance(state["dirty"], bool)
    path = save_result("unit", {"x": 1}, results_dir=tmp_path)
    record = json.loads(path.read_text())
    assert record["commit"] == head and record["dirty"] == state["dirty"] and record["figures"] == {"x": 1}
    assert not record["command"].startswith("/")


def test_recipes_reproduce_the_configs_of_the_results_they_name() -> None:
    """A recipe file is the config its result was made with: the reference recipes hold what the
    benchmarks' former built-in recipes held (so the cached models keep their keys), and each derived
    recipe equals its data set's reference plus the --set overrides its result's command recorded."""
    import shlex

    from benchmarks.common import RECIPES, cache_key, run_config
    from genrec.config import GenrecConfig, load_config

    def model_inputs(config: GenrecConfig) -> list[object]:
        raw = config.to_dict()
        return [raw["model"], raw["train"], raw["sid"], raw["bids"], raw["rspo"]]

    former = {"beauty": ["train.epochs=12", "train.max_examples_per_user=0"],
              "scientific": ["train.epochs=15", "train.max_examples_per_user=0"],
              "movielens": ["train.epochs=6", "train.max_examples_per_user=50"]}
    # The defaults they ran at: VSL on and no value tilt (the shipped default since is VSL off, tilt 0.6).
    defaults_then = ["train.vsl=true", "train.value_tilt=0"]
    for name, overrides in former.items():
        assert cache_key(*model_inputs(run_config(name, []))) == \
            cache_key(*model_inputs(GenrecConfig().with_overrides([*defaults_then, *overrides])))
    derived = {"quality_beauty_likelihood.yaml": ("beauty", "quality_beauty_vsloff_ffn4_ddp2_novalue_seeds"),
               "rspo_beauty.yaml": ("beauty", "rspo_beauty"),
               "rspo_movielens.yaml": ("movielens", "rspo_movielens_origins")}
    for recipe, (name, result) in derived.items():
        words = shlex.split(json.loads((REPO / "benchmarks" / "results" / f"{result}.json").read_text())["command"])
        sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
        assert model_inputs(load_config(RECIPES / recipe)) == model_inputs(run_config(name, sets)), recipe


def test_the_controller_ramp_recipe_is_the_experiment_its_results_ran() -> None:
    from benchmarks.common import RECIPES
    from genrec.config import GenrecConfig, load_config

    former = [  # the experiment's overrides, as bench_controller_ramp held them when its results ran
        "serving.beam_ladder=[[4],[16],[64],[256]]", "serving.default_rung=3", "serving.max_beam_width=256",
        "serving.inflight_guard=100000",
        "controller.slo_p99_seconds=0.2", "controller.interval_seconds=1.0", "controller.window=5s",
        "controller.cooldown_seconds=5.0", "controller.up_after=5", "controller.hold_seconds=10.0",
        "controller.push_timeout_seconds=1.0", "controller.push_retries=3", "controller.push_backoff_seconds=0.2",
        "controller.capacity_memory_seconds=120", "controller.fast_window=3s",
    ]
    assert load_config(RECIPES / "controller_ramp.yaml") == GenrecConfig().with_overrides(former)


def test_value_pareto_weight_0_is_the_likelihood_recipe_and_the_choice_uses_validation_only() -> None:
    """Weight 0 of the value-aware family must be the likelihood-only recipe's own model (the same
    cache entry, so the curve starts at the recipe it is judged against); the shipped weight is
    picked on validation, whatever test says."""
    from benchmarks.bench_value_pareto import choose_on_validation, weight_overrides
    from benchmarks.common import RECIPES
    from genrec.config import load_config

    family = RECIPES / "value_pareto_beauty.yaml"
    likelihood = load_config(RECIPES / "quality_beauty_likelihood.yaml").to_dict()
    for section in ("model", "train", "sid", "bids", "data"):
        assert load_config(family, weight_overrides(0.0)).to_dict()[section] == likelihood[section], section
    half = load_config(family, weight_overrides(0.5)).train
    assert half.vsl and half.value_weight == 0.5

    def point(weight: float, valid: tuple[float, float], test: tuple[float, float]) -> dict:
        return {"value_weight": weight, "valid": {"recall@10": valid[0], "value@10": valid[1]},
                "test": {"recall@10": test[0], "value@10": test[1]}}

    points = [point(0.0, (0.100, 0.20), (0.10, 0.20)),
              point(0.5, (0.098, 0.24), (0.08, 0.30)),   # keeps 98% of recall on validation
              point(0.7, (0.096, 0.26), (0.10, 0.35)),   # keeps 96%: past the half of the allowance kept
              point(1.0, (0.090, 0.30), (0.10, 0.40))]   # loses 10% on validation: out, though test looks best
    assert choose_on_validation(points)["value_weight"] == 0.5
    assert choose_on_validation([points[0], points[3]])["value_weight"] == 0.0


def test_the_fleet_recipe_simulates_the_deployed_config() -> None:
    """bench_fleet's recipe runs the controller and autoscaling settings the base manifests deploy."""
    from benchmarks.common import RECIPES
    from genrec.config import load_config

    recipe = load_config(RECIPES / "fleet.yaml").to_dict()
    deployed = load_config(REPO / "manifests" / "base" / "genrec-config.yaml").to_dict()
    for section in ("controller", "autoscaling", "serving"):
        keys = {k for k in recipe[section] if k not in {"prometheus_url", "kubernetes_service", "kubernetes_namespace",
                                                       "state_file", "metrics_port", "admin_port", "model_name",
                                                       "admin_token_env"}}
        assert {k: recipe[section][k] for k in keys} == {k: deployed[section][k] for k in keys}, section
