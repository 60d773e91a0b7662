"""The shipped deployment files as the tests read them: the compose file, the rendered manifests, the image."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from tests.processes import ROOT, tool

COMPOSE = ROOT / "docker-compose.yml"
POD_MONITOR = ROOT / "deploy" / "k8s" / "prometheus-operator" / "podmonitor.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def rendered_manifests() -> list[dict]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(ROOT / "deploy" / "k8s")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def manifest(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def image_runtime(dockerfile: Path = ROOT / "deploy" / "Dockerfile") -> tuple[list[str], dict[str, str]]:
    """ENTRYPOINT and ENV of the final stage of the Dockerfile."""
    final = re.split(r"^FROM ", dockerfile.read_text().replace("\\\n", " "), flags=re.MULTILINE)[-1]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", final, re.MULTILINE).group(1))
    env = {}
    for line in re.findall(r"^ENV (.+)$", final, re.MULTILINE):
        for pair in shlex.split(line):
            key, value = pair.split("=", 1)
            env[key] = value
    return entrypoint, env
