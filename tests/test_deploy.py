"""The deployment files: the Kubernetes example validated against the Kubernetes schema, the Dockerfile's
promises (non-root, a health check, the run directory as a volume, a command `ownllm serve` accepts),
and the image built where a container engine runs."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest
import yaml

from helpers import REPO
from ownllm.cli import build_parser

KUBERNETES_VERSION = "1.37.0"


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()) if d]


def test_the_kubernetes_example_is_valid_against_the_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kinds = []
    for document in documents():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises on any error
        kinds.append(document["kind"])
    assert kinds == ["PersistentVolumeClaim", "Deployment", "Service"]


def test_the_deployment_probes_health_mounts_the_run_and_runs_as_no_root():
    claim, deployment, service = documents()
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["cpu"] and pod["securityContext"]["runAsNonRoot"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/run-dir"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def instructions() -> dict[str, list[str]]:
    lines = (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    found: dict[str, list[str]] = {}
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def test_the_dockerfile_runs_ownllm_serve_as_a_user_with_a_health_check():
    found = instructions()
    (user,) = found["USER"]
    assert user not in ("0", "root")
    assert "/health" in found["HEALTHCHECK"][0] and found["VOLUME"] == ['["/run-dir"]']
    command = json.loads(found["ENTRYPOINT"][0])
    assert command[:2] == ["ownllm", "serve"]
    args = build_parser(command[1:]).parse_args(command[1:])  # every flag is one `ownllm serve` has
    assert str(args.run) == "/run-dir" and args.host == "0.0.0.0" and args.api_key_file is not None
    for run in found["RUN"]:
        assert "torch" not in shlex.split(run) or "--index-url" in run  # never the CUDA wheels


def test_the_image_builds_where_a_container_engine_runs(tmp_path):
    engine = shutil.which("docker") or shutil.which("podman")
    if engine is None or subprocess.run([engine, "info"], capture_output=True).returncode != 0:
        pytest.skip("no container engine runs here")
    build = subprocess.run([engine, "build", "-q", "-t", "ownllm-test", str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
