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


def test_shipped_configs_load() -> None:
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        load_config(path)


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
