"""The summariser's fast paths against the full-softmax definition, and its bounded memory."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genrec.vista.model import SummarizerShape, VistaSummarizer, reference_summary

TOLERANCE = 1e-5


def make_model(num_items: int = 500, tokens: int = 4, dim: int = 32, heads: int = 2, cap: float = 10.0,
               seed: int = 0) -> VistaSummarizer:
    torch.manual_seed(seed)
    model = VistaSummarizer(SummarizerShape(num_items=num_items, tokens=tokens, dim=dim, heads=heads,
                                            logit_cap=cap, readout_hidden=2 * dim, init_std=0.5))
    # Sharpen the attention so that the parity is tested away from the uniform regime.
    with torch.no_grad():
        model.queries.mul_(4.0)
    return model.eval()


@pytest.mark.parametrize(("length", "chunk_size"), [(40, 1), (600, 7), (600, 64), (600, 599), (600, 5000)])
@torch.no_grad()
def test_chunked_attention_equals_full_softmax(length: int, chunk_size: int) -> None:
    model = make_model()
    items = torch.randint(1, 501, (length,))
    reference = reference_summary(model, items)
    assert torch.allclose(model.summarize(items, chunk_size), reference, atol=TOLERANCE)


@torch.no_grad()
def test_logits_are_capped_and_attention_is_not_uniform() -> None:
    model = make_model(cap=3.0)
    logits, _ = model.item_attention(torch.arange(1, 501))
    assert logits.abs().max() <= 3.0
    weights = model.token_attention(torch.arange(1, 501))
    assert weights.shape == (4, 500) and torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert weights.max() > 5 / 500  # some items matter more than others


@torch.no_grad()
def test_padded_batch_matches_single_histories() -> None:
    model = make_model()
    histories = [torch.randint(1, 501, (n,)) for n in (1, 7, 300)]
    padded = torch.zeros(3, 300, dtype=torch.long)
    for row, history in enumerate(histories):
        padded[row, :len(history)] = history
    batch = model.summarize_batch(padded, chunk_size=64)
    for row, history in enumerate(histories):
        assert torch.allclose(batch[row], reference_summary(model, history), atol=TOLERANCE)


@torch.no_grad()
def test_prefix_summaries_equal_summaries_of_prefixes() -> None:
    model = make_model()
    items = torch.randint(1, 501, (2, 200))
    items[1, 150:] = 0  # a shorter, padded sequence
    positions = torch.tensor([[1, 2, 100, 200], [1, 50, 149, 150]])
    prefixes = model.prefix_summaries(items, positions)
    for row in range(2):
        for column, position in enumerate(positions[row].tolist()):
            expected = reference_summary(model, items[row, :position])
            assert torch.allclose(prefixes[row, column], expected, atol=TOLERANCE)


def test_gradients_flow_through_the_prefix_path() -> None:
    model = make_model().train()
    items = torch.randint(1, 501, (3, 20))
    summaries = model.prefix_summaries(items, torch.tensor([[5], [10], [20]]))
    model.score(summaries[:, 0], torch.arange(1, 11)).sum().backward()
    assert model.queries.grad is not None and model.queries.grad.abs().sum() > 0
    assert model.item_embedding.weight.grad is not None


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor an op allocates (views of inputs excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()]
                  if isinstance(a, torch.Tensor)}
        for value in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, value.numel())
        return out


@torch.no_grad()
def test_long_history_in_bounded_memory_and_linear_time() -> None:
    model = make_model(num_items=1000, tokens=2, dim=8, heads=1)
    chunk = 8192
    largest, seconds = {}, {}
    for length in (20_000, 200_000):
        items = torch.randint(1, 1001, (length,))
        with LargestTensor() as probe:
            model.summarize(items, chunk)
        largest[length] = probe.largest
        start = time.perf_counter()
        model.summarize(items, chunk)
        seconds[length] = time.perf_counter() - start
    # No intermediate grows with the history: the largest is a chunk's embeddings (chunk x d).
    assert largest[200_000] == largest[20_000] <= chunk * 8
    # Ten times the history costs about ten times the time (generous: the machine is shared).
    assert seconds[200_000] < 40 * seconds[20_000] + 0.5


@torch.no_grad()
def test_scoring_cost_does_not_depend_on_history_length() -> None:
    model = make_model()
    summaries = torch.stack([model.summarize(torch.randint(1, 501, (n,)), 256) for n in (1, 10_000)])
    with LargestTensor() as probe:
        scores = model.score(summaries, torch.arange(1, 101))
    assert scores.shape == (2, 100) and probe.largest <= 2 * 2 * 100 * 32
