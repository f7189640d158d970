"""The value tilt from training to serving: the artefact carries it, the evaluate step ranks with it,
and the predictor (in process and in its decode process) serves exactly the lists that were
evaluated; each against a plain reference."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.config import ConfigError, GenrecConfig
from genrec.data.split import leave_one_out
from genrec.evaluate import recommend
from genrec.model.artefact import ModelArtefactError, load_model, save_model
from genrec.model.beam import beam_search
from genrec.model.value_tilt import VALUES_FILE, ValueTilt, training_item_values
from genrec.serving.decode_worker import BeamSearcher, DecodeProcess, SearchBatch
from genrec.train.data import evaluation_requests
from genrec.train.rspo.versions import RspoResult, save_rspo_model
from genrec.train.run import run_training
from testbed.serving import HISTORY_FILE, cached_tiny_model, one_torch_thread
from tests.conftest import make_log
from tests.test_train import tiny_codebook, tiny_config
from tests.test_value_tilt import reference_top_k


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def tilted_copy(folder: Path, weight: float, seed: int = 0) -> Path:
    """The tiny served model saved again with a value tilt over random item values (some zero)."""
    model = load_model(cached_tiny_model())
    rng = np.random.default_rng(seed)
    values = rng.lognormal(0.0, 1.0, len(model.item_ids)) * (rng.random(len(model.item_ids)) > 0.1)
    return save_model(folder, model.decoder, model.item_ids, value_tilt=ValueTilt.from_values(weight, values))


def test_the_artefact_keeps_the_tilt_and_a_damaged_table_is_a_clear_error(tmp_path: Path) -> None:
    folder = tilted_copy(tmp_path / "model", 0.6)
    model = load_model(folder)
    assert model.value_tilt is not None and model.value_tilt.weight == 0.6
    assert json.loads((folder / "model.json").read_text())["value_tilt"]["weight"] == 0.6
    np.testing.assert_array_equal(model.value_tilt.item_values, np.load(folder / VALUES_FILE))
    assert load_model(cached_tiny_model()).value_tilt is None  # a model saved without one has none
    np.save(folder / VALUES_FILE, np.ones(3))
    with pytest.raises(ModelArtefactError, match=f"{VALUES_FILE} must hold one finite value per item"):
        load_model(folder)
    (folder / VALUES_FILE).unlink()
    with pytest.raises(ModelArtefactError, match=f"{VALUES_FILE} is missing"):
        load_model(folder)
    with pytest.raises(ValueError, match="table has 2 items"):
        save_model(tmp_path / "other", model.decoder, model.item_ids,
                   value_tilt=ValueTilt.from_values(0.5, np.ones(2)))


@pytest.mark.parametrize("weight", [0.0, 0.6, 1.0])
def test_the_evaluated_lists_are_the_final_beam_reranked_as_the_reference_does(tmp_path: Path,
                                                                                  weight: float) -> None:
    model = load_model(tilted_copy(tmp_path / "model", weight))
    history = pd.read_parquet(cached_tiny_model().parent / HISTORY_FILE)
    requests = evaluation_requests(leave_one_out(history), model.item_ids, model.decoder.config.recent_items,
                                   "test")
    widths, top_k = [8], 5
    got, _ = recommend(model.decoder, requests, model.tables, widths, top_k, batch_size=7,
                       value_tilt=model.value_tilt)
    plain, _ = recommend(model.decoder, requests, model.tables, widths, top_k, batch_size=7)
    tilt = model.value_tilt
    assert tilt is not None
    for row in range(len(requests)):
        length = max(1, int(requests.lengths[row]))
        context = model.decoder.embed_context(torch.as_tensor(requests.recent[row:row + 1, :length]))
        beam = beam_search(model.decoder, context, model.tables, widths, 8)
        expected = reference_top_k(beam.items.numpy(), beam.scores.numpy(), tilt.item_values, weight,
                                   tilt.mean_value, top_k)
        assert got[row].tolist() == expected[0], row
    if weight == 0.0:
        np.testing.assert_array_equal(got, plain)  # weight 0: exactly the likelihood lists
    else:
        assert (got != plain).any()  # the tilt changes some lists on this model


def test_the_predictor_serves_the_lists_the_evaluate_step_scored(tmp_path: Path) -> None:
    folder = tilted_copy(tmp_path / "model", 0.6)
    model = load_model(folder)
    history = pd.read_parquet(cached_tiny_model().parent / HISTORY_FILE)
    requests = evaluation_requests(leave_one_out(history), model.item_ids, model.decoder.config.recent_items,
                                   "test")
    serving = GenrecConfig().serving
    in_process = BeamSearcher(model, serving, None)
    worker = DecodeProcess(folder, "cpu", serving, None, threads=1)
    try:
        for widths, top_k in (((16,), 10), ((4,), 10), ((2,), 3)):  # a rung narrower than top_k too
            evaluated, evaluated_scores = recommend(model.decoder, requests, model.tables, list(widths), top_k,
                                                    batch_size=len(requests), value_tilt=model.value_tilt)
            batch = SearchBatch(requests.recent, None, widths * model.decoder.levels, top_k, None, False)
            served, from_child = in_process.search(batch), worker.search(batch)
            assert served.items.tolist() == evaluated.tolist() == from_child.items.tolist(), widths
            np.testing.assert_allclose(served.scores, evaluated_scores, rtol=1e-5, atol=1e-5)
            # The lists are ordered by the tilted score the answer carries.
            finite = np.where(np.isfinite(served.scores), served.scores, -1e9)
            assert (np.diff(finite, axis=1) <= 1e-6).all()
        names = model.recommend([["i1", "i2", "i3"]], [16], 10)[0]
        assert [name for name, _ in names] == [str(model.item_ids[i]) for i in in_process.search(SearchBatch(
            model.history_rows([["i1", "i2", "i3"]]).numpy(), None, (16,) * model.decoder.levels, 10, None,
            False)).items[0] if i >= 0]
    finally:
        worker.close()


def test_training_records_the_configured_tilt_with_the_training_rows_values(tmp_path: Path) -> None:
    splits = leave_one_out(make_log(users=30, items=30, per_user=7))
    run_training(tiny_config(value_tilt=0.3, epochs=1), splits, tiny_codebook(), tmp_path / "work",
                 tmp_path / "model", log=lambda _: None)
    model = load_model(tmp_path / "model")
    assert model.value_tilt is not None and model.value_tilt.weight == 0.3
    np.testing.assert_array_equal(model.value_tilt.item_values, training_item_values(splits, model.item_ids))
    assert model.manifest["training"]["value_tilt"] == 0.3
    # An RSPO version of it keeps the tilt: the values are the catalogue's, not the policy's.
    result = RspoResult(model.decoder, model.decoder.state_dict(), {})
    save_rspo_model(tmp_path / "v0002", result, model.item_ids, tmp_path / "model", value_tilt=model.value_tilt)
    tuned = load_model(tmp_path / "v0002")
    assert tuned.value_tilt is not None and tuned.value_tilt.weight == 0.3
    np.testing.assert_array_equal(tuned.value_tilt.item_values, model.value_tilt.item_values)


def test_the_shipped_default_is_the_point_chosen_on_validation_and_bad_weights_name_the_field() -> None:
    result = json.loads((Path(__file__).parents[1] / "benchmarks/results/value_pareto_beauty.json").read_text())
    chosen = result["figures"]["verdict"]["chosen_on_validation"]
    default = GenrecConfig().train
    assert (default.vsl, default.value_tilt) == (chosen["value_weight"] > 0, chosen["value_tilt"])
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"train.value_tilt must be in \[0, 1\]"):
            GenrecConfig.from_dict({"train": {"value_tilt": bad}})
