"""Static checks of the Dockerfile, .dockerignore and requirements.lock (no Docker engine needed).

The Dockerfile is parsed into stages and instructions; the TORCH_VARIANT switch is run in /bin/sh with
pip stubbed out, so its branches are exercised, not just grepped.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest

from genrec.config import GenrecConfig
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Global instructions (before the first FROM) and the stages, continuation lines joined."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue  # blank lines, comments and parser directives
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued line"
    global_part: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, len(stages)))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            global_part.append(instruction)
    return global_part, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name, _, value = instruction.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY/ADD, shell or JSON form."""
    rest = instruction.args
    flags = {}
    while (flag := re.match(r"--([\w-]+)(?:=(\S*))?\s+", rest)):
        flags[flag.group(1)] = flag.group(2) or ""
        rest = rest[flag.end():]
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return flags, words[:-1], words[-1]


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the build context) out of the context."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a path or any of its parents
    result = False
    for negate, pattern in dockerignore_patterns():
        forms = {pattern, pattern.replace("**/", "")} if "**/" in pattern else {pattern}
        if any(fnmatch.fnmatchcase(c, f) for c in candidates for f in forms):
            result = not negate
    return result


def test_dockerignore_matcher() -> None:
    assert ignored(".git") and ignored(".git/config") and ignored(".venv/bin/python")
    assert ignored("genrec/__pycache__/x.pyc") and ignored("__pycache__")
    assert not ignored("genrec/cli.py") and not ignored("pyproject.toml")


def test_dockerignore_keeps_the_repository_junk_out() -> None:
    for path in (".git", ".venv", ".pytest_cache", "runs", "feature_repo/data"):
        assert ignored(path), f".dockerignore lets {path} into the build context"


def test_every_copy_source_is_in_the_build_context(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    checked = 0
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, sources, _ = copy_parts(instruction)
            if "from" in flags:
                continue
            for source in sources:
                at = f"Dockerfile line {instruction.line}: {source}"
                assert not re.match(r"[a-z]+://", source), f"{at}: fetch at build time with pinned digests only"
                path = REPO / source
                assert path.exists(), f"{at} does not exist in the repository"
                assert not ignored(source), f"{at} is excluded by .dockerignore"
                checked += 1
    assert checked >= 5


def test_copied_folders_are_not_empty(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """Git keeps no empty folders: on a clean clone, COPY of an empty folder fails ("not found")."""
    _, stages = dockerfile
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, sources, _ = copy_parts(instruction)
            for source in sources if "from" not in flags else []:
                path = REPO / source
                if path.is_dir():
                    files = [p for p in path.rglob("*") if p.is_file() and not ignored(str(p.relative_to(REPO)))]
                    assert files, f"Dockerfile line {instruction.line}: {source}/ holds no file to copy"


def test_copy_from_names_an_earlier_stage(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    for stage in stages:
        earlier = {s.name for s in stages[: stage.index] if s.name} | {str(i) for i in range(stage.index)}
        for instruction in stage.all("COPY"):
            flags, sources, _ = copy_parts(instruction)
            if "from" in flags:
                assert flags["from"] in earlier, f"line {instruction.line}: no earlier stage {flags['from']!r}"


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER: the image would run as root"
    user, _, group = users[-1].args.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, f"USER {users[-1].args}"
    assert not group or (group.isdigit() and int(group) != 0), f"USER {users[-1].args}"
    # The manifests run the pods as this uid.
    manifests = "\n".join(p.read_text() for p in (REPO / "manifests").rglob("*.yaml"))
    if manifests:
        assert f"runAsUser: {user}" in manifests


def _torch_install_command(stages: list[Stage]) -> tuple[Stage, str]:
    found = [(s, i.args) for s in stages for i in s.all("RUN") if "TORCH_VARIANT" in i.args]
    assert len(found) == 1, "expected one RUN that switches on TORCH_VARIANT"
    return found[0]


def _run_switch(command: str, variant: str, args: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shell = shutil.which("sh") or shutil.which("bash")
    if shell is None:
        pytest.skip("no POSIX shell to run the Dockerfile's RUN line")
    stub = 'pip() { echo "pip $*"; }\n'
    env = {**args, "TORCH_VARIANT": variant, "PATH": "/usr/bin:/bin"}
    return subprocess.run([shell, "-c", stub + command], capture_output=True, text=True, env=env, timeout=30)


def test_torch_variant_builds_cpu_and_cuda(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    global_part, stages = dockerfile
    stage, command = _torch_install_command(stages)
    args = arg_defaults(stage.instructions)
    assert args.get("TORCH_VARIANT") == "cpu", "ARG TORCH_VARIANT must default to cpu in the stage that uses it"
    cpu = _run_switch(command, "cpu", args)
    assert cpu.returncode == 0, cpu.stderr
    assert f"torch=={args['TORCH_VERSION']}" in cpu.stdout and "--index-url" in cpu.stdout
    assert args["TORCH_CPU_INDEX"] in cpu.stdout and "/cpu" in args["TORCH_CPU_INDEX"]
    cuda = _run_switch(command, "cuda", args)
    assert cuda.returncode == 0, cuda.stderr
    assert f"torch=={args['TORCH_VERSION']}" in cuda.stdout and "--index-url" not in cuda.stdout
    wrong = _run_switch(command, "rocm", args)
    assert wrong.returncode != 0 and "TORCH_VARIANT" in wrong.stderr
    # An ARG does not cross stages: every stage that reads TORCH_VARIANT must declare it.
    for each in stages:
        reads = any("TORCH_VARIANT" in i.args for i in each.instructions if i.keyword != "ARG")
        if reads:
            assert "TORCH_VARIANT" in arg_defaults(each.instructions), f"stage {each.name} reads an undeclared ARG"


def test_torch_is_pinned_once_and_consistently(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    stage, _ = _torch_install_command(stages)
    version = arg_defaults(stage.instructions)["TORCH_VERSION"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert f"torch=={version}" in pyproject["project"]["dependencies"]
    assert f"torch=={version}" in (REPO / "Makefile").read_text()
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert not [line for line in lock if re.match(r"torch==", line, re.I)], "torch is installed on its own"


def test_entrypoint_is_the_declared_console_script(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    entrypoints = stages[-1].all("ENTRYPOINT")
    assert entrypoints, "the final stage has no ENTRYPOINT"
    command = json.loads(entrypoints[-1].args)  # exec form: signals reach the process, no shell
    assert isinstance(command, list) and command
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, f"{command[0]} is not in [project.scripts]"
    module, _, function = scripts[command[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_stages_share_the_interpreter(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    """The venv is copied from the builder: its symlinks need the same Python at the same path."""
    global_part, stages = dockerfile
    assert len(stages) >= 2
    assert stages[0].image == stages[-1].image
    assert "PYTHON_IMAGE" in arg_defaults(global_part) or ":" in stages[0].image
    venvs = [re.search(r"python -m venv (\S+)", i.args) for i in stages[0].all("RUN")]
    venv = next(m.group(1) for m in venvs if m)
    copies = [copy_parts(i) for i in stages[-1].all("COPY")]
    assert any(f.get("from") == stages[0].name and s == [venv] for f, s, _ in copies)
    final_env = " ".join(i.args for i in stages[-1].all("ENV"))
    assert f"PATH={venv}/bin" in final_env


def test_runtime_suits_a_read_only_root_filesystem(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    env = " ".join(i.args for i in stages[-1].all("ENV"))
    for variable in ("XDG_CACHE_HOME", "MPLCONFIGDIR"):
        match = re.search(rf"{variable}=(\S+)", env)
        assert match and match.group(1).startswith("/tmp/"), f"{variable} must point under /tmp"


def test_exposed_ports_are_the_configured_ones(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    exposed = {int(p.split("/")[0]) for i in stages[-1].all("EXPOSE") for p in i.args.split()}
    cfg = GenrecConfig()
    assert exposed == {cfg.serving.http_port, cfg.serving.grpc_port, cfg.controller.metrics_port}


def test_requirements_lock_pins_every_line() -> None:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert pins
    for line in pins:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+", line.strip()), \
            f"requirements.lock: {line!r} is not an exact name==version pin"
    names = [re.split(r"[\[=]", line.strip())[0].lower().replace("_", "-") for line in pins]
    assert len(names) == len(set(names)), "a package is pinned twice"
    assert "genrec" not in names, "the project itself is installed from source, not from the lock"


def test_parser_handles_continuations_and_json_form() -> None:
    global_part, stages = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=x:1\nFROM $BASE AS a\nRUN echo 1 \\\n  # dropped\n  && echo 2\n"
        'FROM $BASE\nCOPY --from=a ["/o", "/p"]\nUSER 1:1\n')
    assert arg_defaults(global_part) == {"BASE": "x:1"}
    assert [s.name for s in stages] == ["a", None]
    assert stages[0].all("RUN")[0].args == "echo 1  && echo 2"
    assert copy_parts(stages[1].all("COPY")[0]) == ({"from": "a"}, ["/o"], "/p")
