"""`genrec/` is a plain library: serving must never pull in the pipeline SDK."""

import subprocess
import sys
from pathlib import Path

GENREC = Path(__file__).resolve().parents[1] / "genrec"


def test_no_kfp_import_in_library_source() -> None:
    def imports_kfp(path: Path) -> bool:
        return any(line.strip().startswith(("import kfp", "from kfp")) for line in path.read_text().splitlines())

    offenders = [str(p) for p in GENREC.rglob("*.py") if imports_kfp(p)]
    assert offenders == []


def test_importing_the_library_loads_no_kfp() -> None:
    modules = sorted({".".join(p.relative_to(GENREC.parent).with_suffix("").parts)
                      for p in GENREC.rglob("*.py") if p.name != "__main__.py"})
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
