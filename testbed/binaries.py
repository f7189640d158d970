"""The server binaries the integration tests need: Debian's `redis-server` and `prometheus`
(`.ci/run` installs them). Without one a test skips and says why; in CI (GENREC_REQUIRE_SERVERS=1)
it fails instead, so CI always runs them all."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_SERVERS = os.environ.get("GENREC_REQUIRE_SERVERS") == "1"


def require_binary(name: str, install_hint: str = "") -> str:
    """Path of a server binary or tool; skips the test (or fails, in CI) when it is missing, saying how
    to install it (Debian's package of the same name unless `install_hint` says otherwise)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed: {install_hint or f'apt-get install {name}'}; .ci/run installs it"
    if REQUIRE_SERVERS:
        pytest.fail(message)
    pytest.skip(message)
