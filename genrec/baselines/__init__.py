"""Reference recommenders every candidate generator is compared with, on the same split and protocol
(`genrec.evaluate.ranking_metrics`): `popularity` (the most-interacted training items) and `sasrec`
(an item-ID SASRec trained with the full softmax over the catalogue)."""

from genrec.baselines.popularity import PopularityBaseline
from genrec.baselines.sasrec import SASRec, train_sasrec, user_sequences

__all__ = ["PopularityBaseline", "SASRec", "train_sasrec", "user_sequences"]
