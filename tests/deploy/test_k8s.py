"""deploy/k8s: every manifest validates offline against the Kubernetes JSON schemas bundled in the PyPI
package kubernetes-validate (strict: unknown fields are errors), and what the manifests say agrees with
the service: probe paths, the drain's timing, settings names, the metric the autoscaler reads.

Rendering: `kubectl kustomize` (or `kustomize build`) when either is installed, which needs no network;
otherwise the plain kustomizations (only `resources`, as deploy/k8s and deploy/k8s/base are kept) are
rendered here, and the GPU overlay's patches are checked without being applied.

CRDs: the ServiceMonitor (monitoring.coreos.com/v1) has no schema in kubernetes-validate and none is
vendored here; it is checked structurally instead (its selector and port against the Service).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# the oldest minor version the manifests target (autoscaling/v2 and policy/v1 are GA since 1.23/1.21) and
# the newest the validator bundles
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
CRD_GROUPS = ("monitoring.coreos.com/",)
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_with_binary(directory: Path) -> list[dict]:
    cmd = kustomize_command()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_plain(directory: Path) -> list[dict]:
    """A kustomization of `resources` (files, or directories with their own kustomization) and at most a
    `namespace` (our resources are all namespaced), rendered without kustomize. Anything more (patches,
    generators, images, ...) is refused, not half-applied."""
    spec = load_yaml(directory / "kustomization.yaml")[0]
    extra = set(spec) - {"apiVersion", "kind", "resources", "namespace"}
    if extra:
        raise NotImplementedError(f"{directory}: {sorted(extra)} needs kustomize to render")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        docs += render_plain(path) if path.is_dir() else load_yaml(path)
    if "namespace" in spec:
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def rendered(directory: Path) -> list[dict]:
    return render_with_binary(directory) if kustomize_command() else render_plain(directory)


def by_kind(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def default() -> list[dict]:
    """`kubectl apply -k deploy/k8s`: the CPU deployment."""
    return rendered(K8S)


@pytest.fixture(scope="module")
def container(default) -> dict:
    [c] = by_kind(default, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --- the files and the schemas --------------------------------------------------------------------
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)) or ".")
def test_every_listed_resource_and_patch_exists(directory):
    spec = load_yaml(directory / "kustomization.yaml")[0]
    listed = spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]
    assert listed, f"{directory} lists nothing"
    for entry in listed:
        path = directory / entry
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{directory}: {entry} does not exist"


def test_every_manifest_file_is_listed_by_a_kustomization():
    listed = set()
    for directory in KUSTOMIZATIONS:
        spec = load_yaml(directory / "kustomization.yaml")[0]
        listed |= {(directory / e).resolve() for e in spec.get("resources", [])}
        listed |= {(directory / p["path"]).resolve() for p in spec.get("patches", [])}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files <= listed, f"not in any kustomization: {sorted(str(p) for p in files - listed)}"


def validate(doc: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                             f"{path}: {exc.message}") from None


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)) or ".")
def test_every_rendered_resource_validates_against_the_kubernetes_schema(directory, version):
    try:
        docs = rendered(directory)
    except NotImplementedError as exc:  # the GPU overlay without kustomize: its patches below instead
        pytest.skip(str(exc))
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # no bundled schema for CRDs; test_service_monitor_points_at_the_service checks it
        validate(doc, version)


@pytest.mark.parametrize("directory", [d for d in KUSTOMIZATIONS if d.name != "gpu"],
                         ids=lambda p: str(p.relative_to(K8S)) or ".")
def test_the_plain_renderer_agrees_with_kustomize(directory):
    if kustomize_command() is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(render_plain(directory), key=key) == sorted(render_with_binary(directory), key=key)


def test_a_wrong_field_is_caught():
    """The schemas are strict: a misspelt field fails, so the passing tests above mean something."""
    deployment = by_kind(render_plain(K8S), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(AssertionError, match="terminationGracePeriod"):
        validate(deployment, VERSIONS[0])


# --- what the manifests say about the service ------------------------------------------------------
def test_probes_use_the_services_health_and_readiness_endpoints(container):
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert ports["http"] == int(env_of(container)["DHRD_PORT"])
    # the start-up probe leaves time for `--compile` (~2.5 minutes before /ready on CPU)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 240


def test_environment_names_real_settings_and_parses(container):
    """Every DHRD_* variable is a Settings field (a typo would be silently ignored by the service)."""
    from service.settings import Settings

    env = {k: v for k, v in env_of(container).items() if k.startswith("DHRD_")}
    unknown = [k for k in env if k.removeprefix("DHRD_").lower() not in Settings.model_fields]
    assert not unknown, f"not service settings: {unknown}"
    settings = Settings(**{k.removeprefix("DHRD_").lower(): v for k, v in env.items() if v is not None})
    assert settings.host == "0.0.0.0" and set(settings.models) == {"cb"}
    assert all(str(path).startswith("/exports/") for path in settings.models.values())


def shutdown_margin_s(workers: int) -> float:
    """Seconds the process may still take past the drain's grace period after SIGTERM: uvicorn's graceful
    cut-off (service/cli.py: grace + N); with --workers, the supervisor's (service/supervisor.py: the front
    ends get grace + N1, then the engine N2)."""
    if not workers:
        source = (REPO / "service" / "cli.py").read_text()
        found = re.search(r"timeout_graceful_shutdown\s*=\s*settings\.grace_s\s*\+\s*([\d.]+)", source)
        assert found, "service/cli.py no longer sets timeout_graceful_shutdown = grace_s + N: re-check the drain timing"
        return float(found.group(1))
    from service import supervisor

    return supervisor.FRONT_END_STOP_MARGIN_S + supervisor.ENGINE_STOP_S


def check_drain_timing(deployment: dict) -> None:
    """terminationGracePeriodSeconds covers the preStop sleep, the drain and the server's own cut-off."""
    from service.settings import Settings

    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = env_of(container)
    settings = Settings(request_timeout_s=env.get("DHRD_REQUEST_TIMEOUT_S", 30.0),
                        shutdown_grace_s=env.get("DHRD_SHUTDOWN_GRACE_S"), workers=env.get("DHRD_WORKERS", 0))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 3 <= pre_stop <= 30  # long enough for endpoints to update, short of delaying every stop
    needed = pre_stop + settings.grace_s + shutdown_margin_s(settings.workers)
    assert needed < pod["terminationGracePeriodSeconds"] <= needed + 30, (needed, pod["terminationGracePeriodSeconds"])
    # queued work was admitted with the request deadline: the grace period lets all of it finish
    assert settings.grace_s >= settings.request_timeout_s


def test_termination_grace_covers_prestop_drain_and_the_servers_cutoff(default):
    check_drain_timing(by_kind(default, "Deployment"))


def test_runs_as_non_root_with_a_read_only_root_and_read_only_exports(default, container):
    pod = by_kind(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["exports"]["mountPath"] == "/exports" and mounts["exports"]["readOnly"] is True
    assert volumes["exports"]["persistentVolumeClaim"]["readOnly"] is True
    claim = volumes["exports"]["persistentVolumeClaim"]["claimName"]
    pvc = by_kind(default, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "emptyDir" in volumes[mounts["tmp"]["name"]] and env_of(container)["TMPDIR"] == mounts["tmp"]["mountPath"]


def test_resources_requested_and_threads_match_the_cpu_request(container):
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert int(env_of(container)["DHRD_THREADS"]) <= int(resources["requests"]["cpu"])


def test_service_selects_the_pods_and_scrape_annotations_point_at_metrics(default, container):
    service = by_kind(default, "Service")
    template = by_kind(default, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    ports = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == next(p["containerPort"] for p in container["ports"]
                                                         if p["name"] == "http")
    pdb = by_kind(default, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


def adapter_rule() -> dict:
    configmap = by_kind(render_plain_any(K8S / "prometheus-adapter"), "ConfigMap")
    [rule] = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    return rule


def render_plain_any(directory: Path) -> list[dict]:
    """The files a kustomization lists, as written (its namespace is not applied)."""
    spec = load_yaml(directory / "kustomization.yaml")[0]
    return [doc for entry in spec["resources"] for doc in load_yaml(directory / entry)]


def test_the_autoscaler_reads_the_queue_depth_the_service_exports_through_the_adapter(default):
    from service.metrics import Metrics

    hpa = by_kind(default, "HorizontalPodAutoscaler")
    deployment = by_kind(default, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      deployment["metadata"]["name"])
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    exported = {m.name for m in Metrics().registry.collect()}
    assert name == "dhrd_queue_depth" and name in exported
    rule = adapter_rule()
    assert rule["name"]["as"] == name and re.search(rule["name"]["matches"], name)
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.Series>>" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]
    # the target is reachable: at most a full default batch waiting per pod
    from service.settings import Settings

    assert 0 < float(metric["pods"]["target"]["averageValue"]) <= Settings().max_batch_size
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_service_monitor_points_at_the_service(default):
    """The CRD's documented skip from the schema check: its references are checked instead."""
    [monitor] = render_plain_any(K8S / "servicemonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    service = by_kind(default, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"] and "http" in ports
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def test_gpu_overlay_puts_one_replica_on_one_gpu():
    if kustomize_command() is None:
        # without kustomize, check the patch's shape only: it must name the base Deployment
        [patch] = load_yaml(K8S / "gpu" / "deployment-gpu.yaml")
        assert patch["metadata"]["name"] == by_kind(render_plain(K8S), "Deployment")["metadata"]["name"]
        pytest.skip("GPU overlay not rendered: neither kustomize nor kubectl is installed")
    docs = render_with_binary(K8S / "gpu")
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    env = env_of(c)
    assert env["DHRD_DEVICE"] == "cuda" and env["DHRD_MODELS"] == "cb=/exports/cb"  # base env kept, GPU env added
    assert int(env["DHRD_WORKERS"]) >= 1  # one engine process per pod, so per GPU, fed by front-end processes
    check_drain_timing(by_kind(docs, "Deployment"))
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["securityContext"]["readOnlyRootFilesystem"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]) <= int(env["DHRD_MAX_BATCH_SIZE"])
