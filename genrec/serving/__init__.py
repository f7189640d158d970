"""Online serving: the KServe predictor, beam policies, DARE drafts and the beam-width controller.

Importing this package is cheap and never imports the pipeline SDK.
"""

from typing import Any

__all__ = ["GenerativeRecommender"]


def __getattr__(name: str) -> Any:
    # The KServe model is imported on first use: KServe (and torch) are heavy, and the controller
    # and the config checks import this package without needing them.
    if name == "GenerativeRecommender":
        from genrec.serving.model import GenerativeRecommender

        return GenerativeRecommender
    raise AttributeError(f"module 'genrec.serving' has no attribute {name!r}")
