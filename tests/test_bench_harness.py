"""The benchmark record: the command relative to the repository, and the commit it ran from."""

from __future__ import annotations

import json
import subprocess

from benchmarks.harness import REPO, command_line, git_state, save_result


def test_command_is_relative_to_the_repository() -> None:
    assert command_line([str(REPO / "benchmarks" / "bench_attack.py"), "--scale", "0.5", "a b"]) == \
        "python -m benchmarks.bench_attack --scale 0.5 'a b'"
    assert command_line([str(REPO / "pipelines" / "run.py"), "--x"]) == "python pipelines/run.py --x"
    assert command_line(["/somewhere/else/tool.py", "--y"]) == "python tool.py --y"
    assert str(REPO) not in command_line([str(REPO / "benchmarks" / "bench_x.py"), "--out", "rel"])


def test_record_names_the_commit_and_a_dirty_tree(tmp_path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    state = git_state()
    assert state["commit"] == head and isinstance(state["dirty"], bool)
    path = save_result("unit", {"x": 1}, results_dir=tmp_path)
    record = json.loads(path.read_text())
    assert record["commit"] == head and record["dirty"] == state["dirty"] and record["figures"] == {"x": 1}
    assert not record["command"].startswith("/")
