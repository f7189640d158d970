"""Imports KServe safely from inside another command line.

`kserve.model_server` parses `sys.argv` with argparse's `parse_known_args` at import time, and
argparse accepts unambiguous prefixes: `genrec serve --config C` would be read as KServe's
`--configure_logging C` and end the process. genrec passes every server setting explicitly, so
KServe is imported with an empty argument list.
"""

from __future__ import annotations

import sys
from types import ModuleType


def import_kserve() -> ModuleType:
    if "kserve.model_server" in sys.modules:
        import kserve

        return kserve
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        import kserve.model_server  # noqa: F401 - the module that parses argv
    finally:
        sys.argv = saved
    return kserve
