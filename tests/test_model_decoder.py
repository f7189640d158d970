"""Decoders: the fast decoding path (LazyAR's shared lower layers, AR's KV cache) against the plain
teacher-forced recomputation, and the context's padding and summary handling."""

import dataclasses

import numpy as np
import pytest
import torch

from genrec.config import ModelConfig
from genrec.model.decoder import ARDecoder, Context, LazyARDecoder, SidSpace, build_decoder

LEVEL_SIZES = [5, 4, 3]


def tiny_space(items: int = 40, seed: int = 0) -> SidSpace:
    rng = np.random.default_rng(seed)
    codes = np.unique(np.stack([rng.integers(0, s, 400) for s in LEVEL_SIZES], axis=1), axis=0)
    codes = codes[rng.permutation(len(codes))[:items]]
    return SidSpace(LEVEL_SIZES, codes)


def tiny_config(**overrides) -> ModelConfig:
    base = ModelConfig(d_model=32, layers=3, top_layers=1, heads=4, dropout=0.0, recent_items=6)
    return dataclasses.replace(base, **overrides)


def random_recent(space: SidSpace, batch: int = 5, length: int = 6, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, batch)
    recent = np.full((batch, length), -1)
    for row, n in enumerate(lengths):
        recent[row, :n] = rng.integers(0, space.items, n)
    return torch.as_tensor(recent)


def fast_log_probs(decoder, context: Context, prefixes: torch.Tensor) -> torch.Tensor:
    """Log-probs of every level's codes for W beams per request by start/step: [B, W, L, K_max]."""
    batch, beams, levels = prefixes.shape
    state = decoder.start(context)
    out = torch.full((batch, beams, levels, max(decoder.level_sizes)), float("nan"))
    for level in range(levels):
        previous = None if level == 0 else prefixes[:, :, level - 1]
        step = decoder.step(state, level, previous)
        out[:, :, level, : step.shape[-1]] = step.expand(batch, beams, -1)
        if level == 0:  # from one beam to W beams, all extending the single root beam
            state.reorder(torch.zeros(batch, beams, dtype=torch.long))
    return out


def reference_log_probs(decoder, context: Context, prefixes: torch.Tensor) -> torch.Tensor:
    """The same by the full teacher-forced pass, recomputed from scratch for every beam."""
    batch, beams, levels = prefixes.shape
    out = torch.full((batch, beams, levels, max(decoder.level_sizes)), float("nan"))
    for beam in range(beams):
        logits, _ = decoder.teacher_forced(context, prefixes[:, beam])
        for level, level_logits in enumerate(logits):
            out[:, beam, level, : level_logits.shape[-1]] = torch.log_softmax(level_logits, -1)
    return out


@pytest.mark.parametrize("decoder_class, top_layers", [(LazyARDecoder, 1), (LazyARDecoder, 2), (ARDecoder, 1)])
def test_fast_decoding_matches_recomputation(decoder_class, top_layers) -> None:
    torch.manual_seed(0)
    space = tiny_space()
    decoder = decoder_class(tiny_config(top_layers=top_layers), space).eval()
    recent = random_recent(space)
    context = decoder.embed_context(recent)
    rng = np.random.default_rng(3)
    prefixes = torch.as_tensor(space.codes[rng.integers(0, space.items, (recent.shape[0], 7))])
    with torch.no_grad():
        fast = fast_log_probs(decoder, context, prefixes)
        slow = reference_log_probs(decoder, context, prefixes)
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-5, equal_nan=True)


def test_lazy_lower_layers_never_see_the_prefix() -> None:
    torch.manual_seed(0)
    space = tiny_space()
    decoder = LazyARDecoder(tiny_config(layers=3, top_layers=1), space).eval()
    state = decoder.start(decoder.embed_context(random_recent(space)))
    assert decoder.prefix_layer == 2 and len(state.memory) == 1
    ar_state = ARDecoder(tiny_config(), space).eval().start(decoder.embed_context(random_recent(space)))
    assert len(ar_state.memory) == 3


def test_padding_does_not_change_the_output() -> None:
    torch.manual_seed(0)
    space = tiny_space()
    decoder = build_decoder(tiny_config(), space).eval()
    recent = torch.tensor([[3, 7, 1, -1]])
    padded = torch.tensor([[3, 7, 1, -1, -1, -1]])
    codes = torch.as_tensor(space.codes[:1])
    with torch.no_grad():
        a = decoder.code_log_probs(decoder.embed_context(recent), codes)
        b = decoder.code_log_probs(decoder.embed_context(padded), codes)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_summary_tokens_join_the_context() -> None:
    torch.manual_seed(0)
    space = tiny_space()
    decoder = build_decoder(tiny_config(), space, summary_dim=8, value_head=True).eval()
    recent = random_recent(space, batch=2)
    summaries = torch.randn(2, 3, 8)
    context = decoder.embed_context(recent, summaries)
    assert context.tokens.shape[1] == 1 + 3 + recent.shape[1]
    logits, value = decoder(recent, torch.as_tensor(space.codes[:2]), summaries)
    assert [tuple(x.shape) for x in logits] == [(2, s) for s in LEVEL_SIZES] and value.shape == (2,)
    other = decoder.code_log_probs(decoder.embed_context(recent, summaries + 1.0), torch.as_tensor(space.codes[:2]))
    assert not torch.allclose(other, decoder.code_log_probs(context, torch.as_tensor(space.codes[:2])))
    with pytest.raises(ValueError, match="summaries"):
        decoder.embed_context(recent)


def test_config_picks_the_decoder() -> None:
    space = tiny_space()
    assert build_decoder(tiny_config(decoder="ar"), space).kind == "ar"
    lazy = build_decoder(tiny_config(decoder="lazyar", layers=4, top_layers=1), space)
    assert lazy.kind == "lazyar" and lazy.prefix_layer == 3


def test_model_folder_round_trip(tmp_path) -> None:
    from genrec.model.artefact import ModelArtefactError, load_model, save_model

    torch.manual_seed(0)
    space = tiny_space()
    decoder = build_decoder(tiny_config(), space).eval()
    item_ids = np.array([f"item{i}" for i in range(space.items)])
    save_model(tmp_path / "model", decoder, item_ids, extra={"training": {"steps": 3}})
    loaded = load_model(tmp_path / "model")
    assert loaded.manifest["training"]["steps"] == 3 and loaded.decoder.kind == decoder.kind
    history = [["item3", "unknown", "item5"], ["item1"]]
    recent = loaded.history_rows(history)
    assert recent.tolist() == [[5, 3], [1, -1]]  # most recent first, unknown items dropped
    codes = torch.as_tensor(space.codes[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.decoder.code_log_probs(loaded.decoder.embed_context(recent), codes),
                                   decoder.code_log_probs(decoder.embed_context(recent), codes))
    top = loaded.recommend(history, beam_widths=[8], top_k=3)
    assert [len(r) for r in top] == [3, 3] and all(item.startswith("item") for item, _ in top[0])
    with pytest.raises(ModelArtefactError, match="model.json is missing"):
        load_model(tmp_path)
