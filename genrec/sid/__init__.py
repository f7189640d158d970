"""UA-SID: unified semantic IDs for items (ads).

    from genrec.sid import build_codebook, Codebook
    codebook = build_codebook(catalogue, split_interactions, config.sid)
    codebook.sid_of("42"); codebook.trie.allowed_next((3, 17)); codebook.save("runs/codebook")

See `features` (the fused item vectors), `quantize` (balanced residual k-means, dedup level,
quality figures), `rqvae` (the RQ-VAE option), `trie` (constrained decoding) and `codebook`.
"""

from genrec.sid.codebook import Codebook, CodebookError, build_codebook, codebook_metrics, load_codebook
from genrec.sid.features import ItemFeatures, MiniLMEncoder, build_item_features
from genrec.sid.quantize import balanced_assign, encode_greedy, kmeans
from genrec.sid.trie import SidTrie

__all__ = [
    "Codebook",
    "CodebookError",
    "ItemFeatures",
    "MiniLMEncoder",
    "SidTrie",
    "balanced_assign",
    "build_codebook",
    "build_item_features",
    "codebook_metrics",
    "encode_greedy",
    "kmeans",
    "load_codebook",
]
