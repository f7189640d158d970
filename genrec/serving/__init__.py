"""Online serving: the KServe predictor (`model`, `engine`, `batching`), its routes and wire formats
(`routes`, `requests`, `v2`, `grpc_service`), its bounds (`http_protocol`, `admin`), beam policies
(`policy`) and DARE drafts (`speculative`). The beam-width controller is a separate process:
`genrec.controller`.

Importing this package is cheap and never imports the pipeline SDK.
"""

from typing import Any

__all__ = ["GenerativeRecommender"]


def __getattr__(name: str) -> Any:
    # The KServe model is imported on first use: KServe (and torch) are heavy, and what only needs
    # the beam policies (the controller, for one) imports this package without needing them.
    if name == "GenerativeRecommender":
        from genrec.serving.model import GenerativeRecommender

        return GenerativeRecommender
    raise AttributeError(f"module 'genrec.serving' has no attribute {name!r}")
