"""RSPO: ranking-guided softmax preference optimisation of the VSL model, offline and continual.

| module | what it holds |
| --- | --- |
| `loss` | the objective: preference losses, ranking-gain weights, the KL drift guard |
| `candidates` | requests, the policy's candidate lists, list log-probabilities |
| `trainer` | one optimiser step per batch; tail averaging |
| `offline` | `finetune`: on the training split |
| `continual` | `continual_update`: on a feedback log, into a new version |
| `versions` | versioned model folders: writing, naming, finding |

What the defaults are and why (measured on MovieLens-100k and Beauty) is in docs/rspo.md.
"""

from genrec.train.rspo.candidates import (
    CandidateLists,
    Requests,
    candidate_lists,
    gain_scale,
    sequence_log_probs,
)
from genrec.train.rspo.continual import (
    FEEDBACK_COLUMNS,
    HISTORY_COLUMNS,
    FeedbackError,
    UpdateResult,
    continual_update,
    feedback_requests,
    validate_feedback,
    validate_history,
)
from genrec.train.rspo.loss import (
    LossParts,
    discounts,
    gain_weights,
    list_kl,
    preference_losses,
    rspo_objective,
)
from genrec.train.rspo.offline import finetune
from genrec.train.rspo.trainer import RspoTrainer, StepStats, TailAverage
from genrec.train.rspo.versions import (
    PENDING_FILE,
    REFERENCE_FILE,
    STATE_FILE,
    RspoResult,
    latest_version_dir,
    next_version_dir,
    reference_decoder,
    save_rspo_model,
    version_number,
)

__all__ = [
    "FEEDBACK_COLUMNS", "HISTORY_COLUMNS", "PENDING_FILE", "REFERENCE_FILE", "STATE_FILE", "CandidateLists",
    "FeedbackError", "LossParts", "Requests", "RspoResult", "RspoTrainer", "StepStats", "TailAverage",
    "UpdateResult", "candidate_lists", "continual_update", "discounts", "feedback_requests", "finetune",
    "gain_scale", "gain_weights", "latest_version_dir", "list_kl", "next_version_dir", "preference_losses",
    "reference_decoder", "rspo_objective", "save_rspo_model", "sequence_log_probs", "validate_feedback",
    "validate_history", "version_number",
]
