"""`docker compose up` for real: build the images, serve the fixture export, classify through the published
port, see Prometheus scrape the service, run Locust through the `loadtest` profile, take it all down.

The engine: whatever `docker info` reaches; else the one `../shared/tools/docker-here.sh` starts (our
machines, where no registry can be reached: it builds the Debian base image from the apt mirror) when we
are root or have passwordless sudo; otherwise the module is skipped, saying why. Builds are cached by the
engine, so after the first run `up` costs about the service's start-up (DEPLOY.md, "Build and start times, image sizes").
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "docker-compose.yml"
FIXTURE = REPO / "tests" / "fixtures" / "export-v1-cb"
DOCKER_HERE = REPO.parent / "shared" / "tools" / "docker-here.sh"
DOCK_ROOT = "/tmp/dock"  # docker-here.sh's default state folder: its socket and CLI config live there
PREFIX = "dhrdtest"  # compose project names of this module: PREFIX + pid

pytestmark = pytest.mark.slow


def _engine_answers(env: dict) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def docker_env() -> dict:
    """The environment under which `docker` reaches an engine with compose v2; starts one if we may."""
    env = dict(os.environ)
    here = {**env, "DOCKER_HOST": f"unix://{DOCK_ROOT}/docker.sock", "DOCKER_CONFIG": f"{DOCK_ROOT}/dockercfg"}
    if _engine_answers(env):
        pass
    elif _engine_answers(here):
        env = here
    elif not DOCKER_HERE.exists():
        pytest.skip(f"no Docker engine answers `docker info`, and {DOCKER_HERE} (which starts one) is absent")
    else:
        cmd = ["bash", str(DOCKER_HERE)]
        if os.geteuid() != 0:
            if shutil.which("sudo") is None or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode:
                pytest.skip("no Docker engine answers `docker info`; starting one with docker-here.sh needs root "
                            "or passwordless sudo")
            cmd = ["sudo", "-n", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"docker-here.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        env = here
        assert _engine_answers(env), "docker-here.sh finished but its engine does not answer"
    if subprocess.run(["docker", "compose", "version"], env=env, capture_output=True).returncode != 0:
        pytest.skip("the Docker engine answers but the compose v2 plugin (`docker compose`) is missing")
    return env


def stage_torch_wheel() -> None:
    """Our machines reach no PyTorch index: hand the image build the CPU wheel this machine's pip uses
    (its find-links folder), through docker/wheels/ (git-ignored). Elsewhere the build asks the index."""
    target = REPO / "docker" / "wheels"
    pin = next(line.split("==")[1].strip() for line in (REPO / "constraints.txt").read_text().splitlines()
               if line.startswith("torch=="))
    if any(target.glob(f"torch-{pin}*.whl")):
        return
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                            capture_output=True, text=True)
    folders += config.stdout.split() if config.returncode == 0 else []
    for folder in folders:
        wheels = sorted(Path(folder.removeprefix("file://")).glob(f"torch-{pin}*-cp311-*.whl"))
        if wheels:
            try:
                os.link(wheels[0], target / wheels[0].name)  # same file system: no copy
            except OSError:
                shutil.copy2(wheels[0], target / wheels[0].name)
            return


def remove_leftovers(env: dict) -> None:
    """Containers and networks of an earlier run of this module that was killed before its `down`
    (the service restarts unless stopped, so they would keep running)."""
    listed = subprocess.run(["docker", "ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}'],
                            env=env, capture_output=True, text=True, timeout=60).stdout.split("\n")
    stale = [line.split()[0] for line in listed if len(line.split()) == 2 and line.split()[1].startswith(PREFIX)]
    if stale:
        subprocess.run(["docker", "rm", "-f", *stale], env=env, capture_output=True, timeout=120)
    networks = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"name={PREFIX}"], env=env,
                              capture_output=True, text=True, timeout=60).stdout.split()
    if networks:
        subprocess.run(["docker", "network", "rm", *networks], env=env, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, env: dict, project: str):
        self.env, self.project = env, project
        self.base = f"http://127.0.0.1:{env['STACK_PORT']}"
        self.prometheus = f"http://127.0.0.1:{env['STACK_PROMETHEUS_PORT']}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        base = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE), "--profile", "loadtest"]
        proc = subprocess.run([*base, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            logs = subprocess.run([*base, "logs", "--tail", "40"], cwd=REPO, env=self.env,
                                  capture_output=True, text=True, timeout=60).stdout
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-4000:]}\nlogs:\n{logs[-4000:]}")
        return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = docker_env()
    remove_leftovers(env)
    stage_torch_wheel()
    exports = tmp_path_factory.mktemp("exports")
    shutil.copytree(FIXTURE, exports / "cb")
    for path in (exports, exports / "cb"):  # pytest's folders are 0700; the image's user is not root
        path.chmod(0o755)
    env.update(STACK_EXPORTS=str(exports), STACK_BIND="127.0.0.1", STACK_PORT=str(free_port()),
               STACK_PROMETHEUS_PORT=str(free_port()), STACK_LOCUST_PORT=str(free_port()))
    s = Stack(env, f"{PREFIX}{os.getpid()}")
    try:
        s.compose("up", "-d", "--build", "--wait", timeout=1800)
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def test_classify_through_the_published_port_matches_the_export(stack):
    """The six inputs whose fp32 probabilities the fixture records, served in bf16 by the container."""
    expected = json.loads((FIXTURE.parent / "export-v1-cb.expected.json").read_text())
    response = httpx.post(f"{stack.base}/classify", json={"model": "cb", "input": [r["fields"] for r in expected]},
                          timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(expected)))
    for row, got in zip(expected, data):
        assert got["num_classes"] == 3 and got["label"] in ("entailment", "contradiction", "neutral")
        assert max(abs(a - b) for a, b in zip(got["probs"], row["probs"])) < 0.03  # bf16 against fp32
    assert httpx.get(f"{stack.base}/ready", timeout=10).status_code == 200


def wait_for(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f} s; last seen: {last!r}")


def test_prometheus_scrapes_the_service(stack):
    httpx.post(f"{stack.base}/classify", json={"model": "cb", "input": {"premise": "A.", "hypothesis": "B."}},
               timeout=60).raise_for_status()

    def target_up():
        targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == "dhrd" and t["health"] == "up"]

    assert wait_for(target_up, 60, "Prometheus never saw the dhrd target up")[0]["scrapeUrl"].endswith("/metrics")

    def classified():
        query = 'sum(dhrd_requests_total{endpoint="/classify",model="cb",status="200"})'
        result = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": query},
                           timeout=10).json()["data"]["result"]
        return result and float(result[0]["value"][1]) >= 1

    wait_for(classified, 60, "Prometheus never scraped a dhrd_requests_total sample of /classify (200)")


def test_locust_profile_runs_headless_against_the_service(stack):
    proc = stack.compose("run", "--rm", "-T", "locust", "--headless", "-u", "2", "-r", "2", "-t", "4s",
                         "--only-summary", "--json", "ClassifyUser", timeout=600)
    stats = json.loads(proc.stdout[proc.stdout.index("["):])
    classify = next(s for s in stats if s["name"] == "/classify")
    assert classify["num_requests"] > 0 and classify["num_failures"] == 0, classify
