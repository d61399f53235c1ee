"""The deployment files: the compose file validates, and the same stack runs for real without containers."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_file_is_valid_and_locust_sits_behind_a_profile():
    import yaml

    proc = subprocess.run(["docker-compose", "-f", "docker/docker-compose.yml", "config"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert set(services) == {"dhrd", "prometheus", "locust"}
    assert services["locust"]["profiles"] == ["loadtest"] and "profiles" not in services["dhrd"]
    assert any(v.endswith(":/exports:ro") or "/exports" in str(v) for v in services["dhrd"]["volumes"])


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_runs_as_non_root_with_a_readiness_healthcheck(name):
    """Static checks; tests/docker/test_compose.py builds and runs the CPU image for real."""
    text = (REPO / "docker" / name).read_text()
    assert "USER dhrd" in text and "HEALTHCHECK" in text and "/ready" in text and "/exports/" in text
    assert "ARG BASE=debian:bookworm-slim" in text and "COPY training" not in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
def test_stack_without_containers_serves_loads_and_is_scraped(tiny_export, tmp_path):
    env = {**os.environ, "DHRD_STACK_OUT": str(tmp_path), "DHRD_STACK_PORT": "18731", "DHRD_STACK_PROM_PORT": "19731"}
    proc = subprocess.run(["bash", "scripts/stack.sh", str(tiny_export), "4", "2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "service.log").read_text()[-2000:]
    assert "prometheus scraped" in proc.stdout
    assert (tmp_path / "locust_stats.csv").exists()
