"""Every manifest and every rendered overlay validates against the Kubernetes schemas; kustomize renders them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy_support import DEPLOY

K8S = DEPLOY / "k8s"
KUBECTL = shutil.which("kubectl")
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "examples/per-variant"]
# Custom resources have no schema in the Kubernetes distribution; each gets the structural checks below instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
}
GRPC_PORT = 8001  # XNLI_SERVE_GRPC_PORT's default (issue #26)

pytestmark = pytest.mark.integration


def render(kustomization: str) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) not installed: apt-get install kubernetes-client")
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, check=True
    )
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def validate(resource: dict[str, Any]) -> None:
    key = (resource["apiVersion"], resource["kind"])
    if key in CUSTOM_KINDS:
        assert resource["metadata"]["name"]
        assert resource["spec"]
        return
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def plain_manifests() -> list[Path]:
    return sorted(
        path
        for path in K8S.rglob("*.yaml")
        if path.name not in ("kustomization.yaml", "prometheus-adapter-rules.yaml") and "overlays" not in path.parts
    )


@pytest.mark.parametrize("path", plain_manifests(), ids=lambda path: str(path.relative_to(K8S)))
def test_each_manifest_validates(path: Path) -> None:
    for resource in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        validate(resource)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_overlay_validates_and_is_consistent(kustomization: str) -> None:
    resources = render(kustomization)
    for resource in resources:
        validate(resource)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_kind.setdefault(resource["kind"], []).append(resource)
    deployments = {resource["metadata"]["name"]: resource for resource in by_kind["Deployment"]}
    services = {resource["metadata"]["name"] for resource in by_kind["Service"]}
    config_maps = {resource["metadata"]["name"] for resource in by_kind["ConfigMap"]}
    for hpa in by_kind["HorizontalPodAutoscaler"]:
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        drain = next(int(env["value"]) for env in container["env"] if env["name"] == "XNLI_SERVE_DRAIN_TIMEOUT_S")
        for threads in ("XNLI_SERVE_TORCH_THREADS", "XNLI_SERVE_TOKENIZATION_WORKERS", "OMP_NUM_THREADS"):
            source = next(env for env in container["env"] if env["name"] == threads)["valueFrom"]["resourceFieldRef"]
            assert source["resource"] == "requests.cpu"
            assert container["resources"]["requests"]["cpu"]  # so the thread counts follow the pod, not the node
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["catalogue"]["configMap"]["name"] in config_maps
        assert volumes["model-store"]["persistentVolumeClaim"]["readOnly"] is True
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(key) == value for key, value in deployment["spec"]["selector"]["matchLabels"].items())
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus == 1) == (kustomization in ("overlays/gpu", "examples/per-variant"))
    for route in by_kind.get("HTTPRoute", []) + by_kind.get("GRPCRoute", []):
        for rule in route["spec"]["rules"]:
            assert all(backend["name"] in services for backend in rule["backendRefs"])
    # gRPC (issue #26): each Service exposes the pods' grpc port under that name; the probes stay HTTP.
    for service in by_kind["Service"]:
        ports = {port["name"]: port for port in service["spec"]["ports"]}
        assert (ports["grpc"]["port"], ports["grpc"]["targetPort"]) == (GRPC_PORT, "grpc")
    for deployment in deployments.values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert ports["grpc"] == int(env["XNLI_SERVE_GRPC_PORT"]) == GRPC_PORT
        assert container["readinessProbe"]["httpGet"]["port"] == "http"


def test_per_variant_groups_split_the_catalogue() -> None:
    resources = render("examples/per-variant")
    served: dict[str, str] = {}
    for deployment in (resource for resource in resources if resource["kind"] == "Deployment"):
        env = {
            item["name"]: item.get("value") for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        for variant in env["XNLI_SERVE_VARIANTS"].split(","):
            served[variant] = deployment["metadata"]["name"]
    catalogue = (K8S / "base" / "variants.toml").read_text(encoding="utf-8")
    assert {line.split('"')[1] for line in catalogue.splitlines() if line.startswith("name = ")} == set(served)
    route = next(resource for resource in resources if resource["kind"] == "HTTPRoute")
    for rule in route["spec"]["rules"]:
        backend = rule["backendRefs"][0]["name"]
        for match in rule["matches"]:
            variant = match["path"]["value"].rstrip("/").split("/")[-1]
            assert served[variant].replace("-xnli-serve", "") == backend.replace("-xnli-serve", "")


def test_prometheus_adapter_rule_feeds_the_hpa_metric() -> None:
    rules = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text(encoding="utf-8"))["rules"]
    hpa = yaml.safe_load((K8S / "base" / "hpa.yaml").read_text(encoding="utf-8"))
    assert rules[0]["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert "xnli_queue_depth" in rules[0]["seriesQuery"]


def test_the_grpc_route_sends_each_model_to_its_group() -> None:
    """The GRPCRoute (issue #26) routes by the `x-xnli-model` metadata key exactly as the HTTPRoute routes by path."""
    resources = render("examples/per-variant")
    http = next(resource for resource in resources if resource["kind"] == "HTTPRoute")
    by_path = {
        match["path"]["value"].rstrip("/").split("/")[-1]: rule["backendRefs"][0]["name"]
        for rule in http["spec"]["rules"]
        for match in rule["matches"]
    }
    grpc = next(resource for resource in resources if resource["kind"] == "GRPCRoute")
    by_key: dict[str, str] = {}
    fallback = []
    for rule in grpc["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        assert backend["port"] == GRPC_PORT
        for match in rule["matches"]:
            headers = match.get("headers", [])
            by_key.update({header["value"]: backend["name"] for header in headers if header["name"] == "x-xnli-model"})
            if not headers:
                fallback.append(match["method"]["service"])
    assert by_key == by_path
    assert fallback == ["inference.GRPCInferenceService"]
