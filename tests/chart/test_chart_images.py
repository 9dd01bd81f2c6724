"""The Dockerfiles build the images the chart runs: pinned bases, non-root users, the right commands.

No Docker engine runs the tests, so the Dockerfiles are checked as text. Covers: every base image is
pinned to a full version tag (never latest, never a bare major); the operator builds on
python:3.11-slim and the trainer on a CUDA PyTorch runtime image; each final stage ends as a numeric
non-root USER (numeric, so the kubelet can verify runAsNonRoot), the operator's equal to the chart's
runAsUser and the trainer's equal to the trainer Job's runAsUser; the entrypoints run `lightning-op
operator` (through operator/entrypoint.sh, executable) and `python -m lightning_op.trainer`; each
installs the package with its extra ([azure], [trainer]) and those extras exist; every COPY source
exists and is let in by .dockerignore, while .git, .venv and the tests stay out; the chart's default
images match the package version and the operator's default trainer image.
"""

from __future__ import annotations

import ast
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lightning_op.manifests import trainer_job

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": REPO / "operator" / "Dockerfile", "trainer": REPO / "trainer-image" / "Dockerfile"}
VALUES = yaml.safe_load((REPO / "charts" / "lightning-op" / "values.yaml").read_text(encoding="utf-8"))
CHART = yaml.safe_load((REPO / "charts" / "lightning-op" / "Chart.yaml").read_text(encoding="utf-8"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        return next((arg for kw, arg in reversed(self.instructions) if kw == keyword), None)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments and blank lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arg = line.partition(" ")
        keyword, arg = keyword.upper(), arg.strip()
        if keyword == "FROM":
            words = [w for w in arg.split() if not w.startswith("--")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, arg))
    return stages


def exec_form(arg: str | None) -> list[str]:
    assert arg is not None and arg.startswith("["), f"use the exec (JSON) form, got {arg!r}"
    parsed: list[str] = json.loads(arg)
    return parsed


STAGES = {name: parse_dockerfile(path) for name, path in DOCKERFILES.items()}


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the repository) out of the build context:
    Docker's rules, the last matching pattern wins and a pattern also matches a path's parents."""
    rules = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_base_images_are_pinned(image: str) -> None:
    aliases = {s.alias for s in STAGES[image] if s.alias}
    for stage in STAGES[image]:
        if stage.base in aliases:
            continue
        name, _, tag = stage.base.partition(":")
        assert "@sha256:" in stage.base or re.search(r"\d+\.\d+\.\d+", tag), (
            f"{image}: base image {stage.base!r} is not pinned to a full version"
        )
        assert tag != "latest" and "$" not in stage.base


def test_operator_builds_on_python_311_slim() -> None:
    bases = {s.base for s in STAGES["operator"]}
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", bases.pop())


def test_trainer_builds_on_cuda_pytorch_runtime() -> None:
    (stage,) = STAGES["trainer"]
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", stage.base)


@pytest.mark.parametrize(
    "image, expected_uid",
    [
        ("operator", VALUES["securityContext"]["runAsUser"]),
        ("trainer", trainer_job.TrainerJobOptions("x").run_as_user),
    ],
    ids=["operator-matches-chart", "trainer-matches-job"],
)
def test_final_stage_runs_as_numeric_non_root_user(image: str, expected_uid: int) -> None:
    user = STAGES[image][-1].last("USER")
    assert user is not None, f"{image}: no USER in the final stage (it would run as root)"
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{image}: USER {user!r} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert int(uid) == expected_uid


def test_operator_entrypoint_runs_lightning_op_operator() -> None:
    final = STAGES["operator"][-1]
    entrypoint, cmd = exec_form(final.last("ENTRYPOINT")), exec_form(final.last("CMD"))
    assert entrypoint == ["/usr/local/bin/lightning-op-entrypoint"] and cmd == ["operator"]
    assert any(
        re.fullmatch(r"--chmod=0?755 operator/entrypoint\.sh /usr/local/bin/lightning-op-entrypoint", copy)
        for copy in final.all("COPY")
    )
    script = REPO / "operator" / "entrypoint.sh"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert text.rstrip().splitlines()[-1] == 'exec lightning-op "$@"'
    assert os.access(script, os.X_OK)


def test_trainer_entrypoint_runs_the_trainer_module() -> None:
    assert exec_form(STAGES["trainer"][-1].last("ENTRYPOINT")) == ["python", "-m", trainer_job.TRAINER_MODULE]


@pytest.mark.parametrize("image, extra", [("operator", "azure"), ("trainer", "trainer")])
def test_installs_the_package_with_its_extra(image: str, extra: str) -> None:
    runs = " ".join(arg for stage in STAGES[image] for arg in stage.all("RUN"))
    assert re.search(rf'pip install [^&]*"\.\[{extra}\]"', runs), f"{image}: no pip install .[{extra}]"
    assert extra in PYPROJECT["project"]["optional-dependencies"]


@pytest.mark.parametrize("image", list(DOCKERFILES))
def test_copy_sources_are_in_the_build_context(image: str) -> None:
    for stage in STAGES[image]:
        for copy in stage.all("COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in copy.split()):
                continue
            for source in words[:-1]:
                assert (REPO / source).exists(), f"{image}: COPY {source}: no such file"
                assert not dockerignored(source), f"{image}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path", [".git", ".venv/bin/python", "tests/unit", "crds/rbac.yaml", "src/x/__pycache__/m.pyc"]
)
def test_dockerignore_keeps_the_rest_out(path: str) -> None:
    assert dockerignored(path)


def test_default_images_match_the_package_and_the_operator() -> None:
    assert CHART["appVersion"] == PYPROJECT["project"]["version"]
    # Read without importing: importing the controllers registers kopf handlers.
    source = (REPO / "src" / "lightning_op" / "controllers" / "finetune.py").read_text(encoding="utf-8")
    default_trainer = next(
        node.value.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "DEFAULT_TRAINER_IMAGE" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    )
    assert default_trainer == f"{VALUES['trainer']['image']['repository']}:{CHART['appVersion']}"
    assert VALUES["collector"]["image"]["repository"] == VALUES["operator"]["image"]["repository"]
