import pytest

from genrec.config import ConfigError, GenrecConfig, load_config


def test_round_trip_through_dict() -> None:
    cfg = GenrecConfig()
    cfg.data.min_interactions_per_user = 7
    assert GenrecConfig.from_dict(cfg.to_dict()) == cfg


def test_struct_doubles_become_ints() -> None:
    # Kubeflow hands dict parameters over as protobuf Structs, where 42 arrives as 42.0.
    raw = GenrecConfig().to_dict()
    raw["seed"] = 42.0
    raw["data"]["min_interactions_per_user"] = 5.0
    cfg = GenrecConfig.from_dict(raw)
    assert cfg.seed == 42 and isinstance(cfg.data.min_interactions_per_user, int)


def test_unknown_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"data\.min_interaction_per_user"):
        GenrecConfig.from_dict({"data": {"min_interaction_per_user": 5}})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"data\.min_interactions_per_user must be an integer"):
        GenrecConfig.from_dict({"data": {"min_interactions_per_user": "five"}})
    with pytest.raises(ConfigError, match=r"pipeline\.enable_caching must be true or false"):
        GenrecConfig.from_dict({"pipeline": {"enable_caching": "yes"}})


def test_cross_field_rule() -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        GenrecConfig.from_dict({"data": {"min_interactions_per_user": 2}})


def test_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: amazon-beauty\nseed: 3\n")
    cfg = load_config(path, ["data.min_interactions_per_user=6", "bids.seed=9"])
    assert (cfg.data.dataset, cfg.seed, cfg.data.min_interactions_per_user, cfg.bids.seed) == (
        "amazon-beauty", 3, 6, 9)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["nonsense"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_load_and_set_what_they_say() -> None:
    """Every YAML under configs/ (recipes included) loads, and each value it spells out is the value in
    force: a file cannot be silently ignored or half-applied."""
    from pathlib import Path

    import yaml

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(paths) >= 3, paths

    def leaves(raw: dict, prefix: str = "") -> list[tuple[str, object]]:
        out = []
        for key, value in raw.items():
            if isinstance(value, dict):
                out += leaves(value, f"{prefix}{key}.")
            else:
                out.append((f"{prefix}{key}", value))
        return out

    for path in paths:
        raw = yaml.safe_load(path.read_text()) or {}
        loaded = load_config(path).to_dict()
        assert leaves(raw), f"{path} sets nothing"
        for dotted, value in leaves(raw):
            node = loaded
            for part in dotted.split("."):
                node = node[part]
            expected = [dict(v) if isinstance(v, dict) else v for v in value] if isinstance(value, list) else value
            assert node == expected or (isinstance(value, str) and node == pytest.approx(float(value))), \
                (path.name, dotted, node, value)


@pytest.mark.parametrize("field,value,choices", [
    ("model.decoder", "lstm", "'lazyar', 'ar'"),
    ("sid.quantizer", "pq", "'rq_kmeans', 'rq_vae'"),
    ("train.schedule", "step", "'cosine', 'linear'"),
    ("rspo.loss", "ppo", "'rspo', 'dpo'"),
    ("deploy.target", "k8s", "'local', 'kserve', 'none'"),
    ("features.online_store", "dynamo", "'sqlite', 'redis'"),
    ("vista.refresh", "never", "'auto', 'period', 'count'"),
])
def test_fields_with_fixed_choices_name_the_choices(field: str, value: str, choices: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field.replace('.', chr(92) + '.')} must be one of {choices}, got '{value}'"):
        load_config(None, [f"{field}={value}"])
    with pytest.raises(ConfigError, match=r"sid\.text_fields\[1\] must be one of"):
        load_config(None, ['sid.text_fields=["title", "colour"]'])


@pytest.mark.parametrize("override,field", [
    ("controller.window=bogus", "controller.window"),
    ("controller.slo_p99_seconds=-1", "controller.slo_p99_seconds"),
    ("controller.step_up_ratio=5", "step_up_ratio"),
    ("controller.fast_window=3", "controller.fast_window"),
    ("controller.capacity_margin=1.5", "controller.capacity_margin"),
    ("controller.rung_capacity_rps=[400, 300]", "controller.rung_capacity_rps"),
    ("controller.capacity_up_utilisation=0.99", "capacity_up_utilisation"),
    ("serving.request_timeout_ms=0", "serving.request_timeout_ms"),
])
def test_controller_and_serving_settings_fail_at_config_show(override: str, field: str) -> None:
    """The whole config is checked where it is loaded: `genrec config show` (and every other command)
    refuses a bad controller setting with a message naming the field, long before a controller pod
    would start."""
    from typer.testing import CliRunner

    from genrec.cli import app

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])
    result = CliRunner().invoke(app, ["config", "show", "--set", override])
    assert result.exit_code == 1 and field in result.output.replace("\n", " "), result.output


def test_exponent_floats_without_a_dot(tmp_path) -> None:
    # YAML 1.1 (PyYAML) reads `3e-4` as a string; a float field must still take it, from a file or --set.
    assert load_config(None, ["rspo.lr=3e-4"]).rspo.lr == pytest.approx(3e-4)
    path = tmp_path / "c.yaml"
    path.write_text("rspo:\n  lr: 2e-4\n")
    assert load_config(path).rspo.lr == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match=r"rspo\.lr must be a number, got 'fast'"):
        load_config(None, ["rspo.lr=fast"])
    with pytest.raises(ConfigError, match=r"rspo\.lr must be a number, got 'nan'"):
        load_config(None, ["rspo.lr=nan"])
