"""VISTA user-history summaries: a torch summariser whose K learned query tokens attend over a
user's whole history in O(history), its training, and snapshots on a refresh schedule."""

from genrec.vista.data import ItemVocab, UserSequences
from genrec.vista.model import SummarizerShape, VistaSummarizer, reference_summary
from genrec.vista.snapshot import (
    RefreshSchedule,
    SnapshotBuilder,
    decode_summary,
    encode_summary,
    latest_snapshots,
    looks_order_only,
)
from genrec.vista.train import TrainedSummarizer, TrainingResult, train_summarizer

__all__ = [
    "ItemVocab",
    "RefreshSchedule",
    "SnapshotBuilder",
    "SummarizerShape",
    "TrainedSummarizer",
    "TrainingResult",
    "UserSequences",
    "VistaSummarizer",
    "decode_summary",
    "encode_summary",
    "latest_snapshots",
    "looks_order_only",
    "reference_summary",
    "train_summarizer",
]
