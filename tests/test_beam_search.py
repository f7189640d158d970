"""Trie-constrained beam search against the slow reference that scores every valid ID exactly."""

import numpy as np
import pytest
import torch

from genrec.model.beam import TrieTables, beam_search, exhaustive_top_k, item_log_probs, level_widths
from genrec.model.decoder import build_decoder
from genrec.sid.trie import SidTrie
from tests.test_model_decoder import random_recent, tiny_config, tiny_space


@pytest.fixture(params=[("lazyar", "dense"), ("ar", "dense"), ("lazyar", "sparse")], ids="-".join)
def setup(request):
    """Each decoder with dense child tables, and LazyAR with every level sparse (as a large
    catalogue's deep levels are): both against the same exhaustive reference."""
    torch.manual_seed(0)
    kind, layout = request.param
    space = tiny_space(items=40)
    decoder = build_decoder(tiny_config(decoder=kind), space).eval()
    tables = TrieTables(SidTrie.from_codes(space.codes, space.level_sizes, layout=layout))
    context = decoder.embed_context(random_recent(space, batch=6))
    return space, decoder, tables, context


def test_wide_beams_equal_the_exhaustive_reference(setup) -> None:
    space, decoder, tables, context = setup
    wide = max(space.level_sizes) * space.items  # wider than any level's number of prefixes
    result = beam_search(decoder, context, tables, [wide], top_k=10)
    reference = exhaustive_top_k(decoder, context, top_k=10)
    assert torch.equal(result.items, reference.items)
    torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=1e-5)


def test_excluded_items_with_wide_beams_equal_the_exhaustive_reference(setup) -> None:
    space, decoder, tables, context = setup
    wide = max(space.level_sizes) * space.items
    plain = beam_search(decoder, context, tables, [wide], top_k=10)
    # Leave out each request's own top 3 and one item it would not rank (PAD -1 mixed in).
    exclude = torch.cat([plain.items[:, :3], plain.items[:, -1:], torch.full((6, 2), -1)], dim=1)
    result = beam_search(decoder, context, tables, [wide], top_k=10, exclude=exclude)
    reference = exhaustive_top_k(decoder, context, top_k=10, exclude=exclude)
    assert torch.equal(result.items, reference.items)
    torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=1e-5)
    assert torch.equal(result.items[:, :6], plain.items[:, 3:9])  # the rest keep their order


def test_excluded_items_never_come_out_of_narrow_beams(setup) -> None:
    space, decoder, tables, context = setup
    exclude = torch.as_tensor(np.random.default_rng(0).choice(space.items, (6, 15)))
    exclude[:, -1] = 10_000  # a row no trie holds is simply never returned
    result = beam_search(decoder, context, tables, [2, 3, 5], top_k=5, exclude=exclude)
    for row in range(6):
        assert not set(result.items[row].tolist()) & set(exclude[row].tolist())
    with pytest.raises(ValueError, match="exclude has 2 rows for 6 requests"):
        beam_search(decoder, context, tables, [4], top_k=5, exclude=exclude[:2])


def test_narrow_beams_emit_only_valid_ids_in_score_order(setup) -> None:
    space, decoder, tables, context = setup
    result = beam_search(decoder, context, tables, [2, 3, 5], top_k=5)
    exact = item_log_probs(decoder, context)
    # Narrow beams may reach fewer than K complete IDs: the rest is -1 with score -inf, at the end.
    found = result.items >= 0
    assert (result.items < space.items).all() and (found[:, :-1] >= found[:, 1:]).all()
    assert torch.isinf(result.scores[~found]).all()
    for row in range(result.items.shape[0]):
        items = result.items[row][found[row]]
        assert len(set(items.tolist())) == len(items) > 0
        torch.testing.assert_close(result.scores[row][found[row]], exact[row, items], rtol=0, atol=1e-5)
    scores = result.scores.masked_fill(~found, -1e9)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_batched_equals_one_request_at_a_time(setup) -> None:
    _, decoder, tables, context = setup
    batched = beam_search(decoder, context, tables, [4], top_k=6)
    for row in range(context.tokens.shape[0]):
        one = type(context)(context.tokens[row:row + 1], context.pad[row:row + 1])
        single = beam_search(decoder, one, tables, [4], top_k=6)
        assert torch.equal(single.items[0], batched.items[row])


def test_fewer_valid_ids_than_k_pads_with_minus_one() -> None:
    torch.manual_seed(0)
    space = tiny_space(items=3)
    decoder = build_decoder(tiny_config(), space).eval()
    tables = TrieTables(SidTrie.from_codes(space.codes, space.level_sizes))
    result = beam_search(decoder, decoder.embed_context(random_recent(space, batch=2)), tables, [8], top_k=5)
    assert (result.items[:, 3:] == -1).all() and torch.isinf(result.scores[:, 3:]).all()
    assert sorted(result.items[0, :3].tolist()) == [0, 1, 2]


def test_level_widths_repeat_the_last_entry() -> None:
    assert level_widths([16, 8], 4) == [16, 8, 8, 8]
    assert level_widths([32], 2) == [32, 32]
    with pytest.raises(ValueError):
        level_widths([], 3)


def test_only_ids_in_the_trie_come_out_even_when_the_model_prefers_others() -> None:
    torch.manual_seed(0)
    space = tiny_space(items=40)
    keep = np.arange(0, 40, 3)
    decoder = build_decoder(tiny_config(), space).eval()
    tables = TrieTables(SidTrie.from_codes(space.codes[keep], space.level_sizes))
    result = beam_search(decoder, decoder.embed_context(random_recent(space, batch=4)), tables, [50], top_k=5)
    # Rows of the smaller trie index `keep`; every one must be a valid row of it.
    assert ((result.items >= 0) & (result.items < len(keep))).all()
