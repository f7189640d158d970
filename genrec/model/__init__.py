"""Semantic-ID decoders (AR baseline and LazyAR), trie-constrained beam search, the model artefact."""

from genrec.model.artefact import TrainedModel, load_model, save_model
from genrec.model.beam import BeamResult, TrieTables, beam_search, exhaustive_top_k, item_log_probs
from genrec.model.decoder import (
    PAD_ITEM,
    ARDecoder,
    Context,
    DecodingState,
    LazyARDecoder,
    SidDecoder,
    SidSpace,
    build_decoder,
)

__all__ = ["PAD_ITEM", "ARDecoder", "BeamResult", "Context", "DecodingState", "LazyARDecoder", "SidDecoder",
           "SidSpace", "TrainedModel", "TrieTables", "beam_search", "build_decoder", "exhaustive_top_k",
           "item_log_probs", "load_model", "save_model"]
