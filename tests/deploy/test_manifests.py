"""deploy/: the Kubernetes and KServe manifests are valid and agree with the Dockerfile.

The core resources are validated offline against the Kubernetes OpenAPI schemas bundled with
kubernetes-validate (strict: unknown fields fail). KServe's CRDs have no bundled schema, so their
required fields and cross-references are checked here by hand.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bnserve.server.grpc.transport import LIVENESS
from bnserve.server.settings import ENV_PREFIX, settable_fields
from tests.support.deploy_support import REPO, dockerfile_env, parse_dockerfile, runtime_stage

KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
KSERVE_DIR = REPO / "deploy" / "kserve"
# gRPC probes are GA from 1.27; validate against that floor and the newest bundled schema.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in `path`."""
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


def core_manifests() -> list[tuple[str, Manifest]]:
    """(file name, document) for every Kubernetes resource in deploy/kubernetes/ (no kustomize)."""
    found = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, document) for document in load_documents(path)]
    return found


def find(kind: str, name: str | None = None) -> Manifest:
    """The one core manifest of `kind` (and `name`, when given)."""
    matches = [
        document
        for _, document in core_manifests()
        if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def container_env(container: Manifest) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def deployment_container() -> Manifest:
    (container,) = find("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


# ---- schema validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("file_name", "manifest"),
    core_manifests(),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_core_manifest_passes_strict_schema(file_name: str, manifest: Manifest, version: str):
    kubernetes_validate.validate(manifest, version, strict=True)


def test_schema_validation_rejects_a_broken_deployment():
    broken = copy.deepcopy(find("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    misspelt = copy.deepcopy(find("Deployment"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    (kustomization,) = load_documents(KUBERNETES_DIR / "kustomization.yaml")
    on_disk = {p.name for p in KUBERNETES_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


# ---- the Deployment and its companions ----------------------------------------------------------


def test_deployment_probes_ask_grpc_health_on_the_grpc_port():
    container = deployment_container()
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "tcpSocket", "httpGet", "exec"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    # Readiness and start-up ask the overall status (models loaded); liveness its own name.
    assert "service" not in container["readinessProbe"]["grpc"]
    assert "service" not in container["startupProbe"]["grpc"]
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS


def test_deployment_runs_non_root_with_resources():
    pod_spec = find("Deployment")["spec"]["template"]["spec"]
    container = deployment_container()
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_service_hpa_and_pdb_point_at_the_deployment():
    deployment = find("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment_container()["ports"]}
    for service_name in ("bnserve", "bnserve-headless"):
        service = find("Service", service_name)
        assert service["spec"]["selector"].items() <= pod_labels.items(), service_name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service_name, port)
    hpa_target = find("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert hpa_target["kind"] == "Deployment"
    assert hpa_target["name"] == deployment["metadata"]["name"]
    pdb_selector = find("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= pod_labels.items()
    claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert claims == {find("PersistentVolumeClaim")["metadata"]["name"]}


# ---- the Dockerfile agrees with the manifests ---------------------------------------------------


def test_dockerfile_ports_env_and_user_match_the_deployment():
    runtime = runtime_stage(parse_dockerfile(REPO / "Dockerfile"))
    exposed = {
        int(port.split("/")[0])
        for keyword, arguments in runtime
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    container = deployment_container()
    assert exposed == {p["containerPort"] for p in container["ports"]}

    image_env = dockerfile_env(runtime)
    manifest_env = container_env(container)
    assert set(manifest_env) <= set(image_env), "the manifest sets variables the image never names"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(image_env["BNSERVE_PORT"]) == int(manifest_env["BNSERVE_PORT"]) == ports["grpc"]
    assert (
        int(image_env["BNSERVE_HTTP_PORT"])
        == int(manifest_env["BNSERVE_HTTP_PORT"])
        == ports["http"]
    )
    assert (
        int(image_env["BNSERVE_METRICS_PORT"])
        == int(manifest_env["BNSERVE_METRICS_PORT"])
        == ports["metrics"]
    )
    model_mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert Path(manifest_env["BNSERVE_MODEL"]).parent == Path(model_mount["mountPath"])

    (user,) = [arguments for keyword, arguments in runtime if keyword == "USER"]
    user_id, group_id = (int(part) for part in user.split(":"))
    pod_security = find("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (user_id, group_id) == (pod_security["runAsUser"], pod_security["runAsGroup"])


def test_every_bnserve_variable_is_a_server_setting():
    """A misspelt BNSERVE_* variable would be ignored silently; each must name a setting."""
    settings = {ENV_PREFIX + field.name.upper() for field in settable_fields()}
    image_env = dockerfile_env(runtime_stage(parse_dockerfile(REPO / "Dockerfile")))
    (runtime,) = load_documents(KSERVE_DIR / "servingruntime.yaml")
    named = {
        "Dockerfile": set(image_env),
        "deployment.yaml": set(container_env(deployment_container())),
        "servingruntime.yaml": set(container_env(runtime["spec"]["containers"][0])),
    }
    for where, names in named.items():
        unknown = {name for name in names if name.startswith(ENV_PREFIX)} - settings
        assert not unknown, f"{where}: {sorted(unknown)} are not server settings"


# ---- KServe -------------------------------------------------------------------------------------


def test_inferenceservice_required_fields_and_runtime():
    (isvc,) = load_documents(KSERVE_DIR / "inferenceservice.yaml")
    (runtime,) = load_documents(KSERVE_DIR / "servingruntime.yaml")

    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert DNS_1035_LABEL.match(isvc["metadata"]["name"])
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"]
    assert model["protocolVersion"] in KSERVE_PROTOCOLS
    assert model["protocolVersion"].endswith("v2"), "the Open Inference Protocol"
    assert re.match(r"^(gs|s3|pvc|https?|hf|oci)://.+", model["storageUri"])

    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] in {"ServingRuntime", "ClusterServingRuntime"}
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]

    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == deployment_container()["image"]
    env = container_env(container)
    assert env["BNSERVE_MODEL"].startswith("/mnt/models/"), "KServe's storage initializer target"
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"]), "both v2 transports"
    http_ports = [p["containerPort"] for p in container["ports"] if p["name"] == "http1"]
    assert http_ports == [int(env["BNSERVE_HTTP_PORT"])], "REST on the port KServe routes"
    isvc_ports = [p["containerPort"] for p in model["ports"] if p["name"] == "h2c"]
    assert isvc_ports == [int(env["BNSERVE_PORT"])], "gRPC on the h2c port the isvc names"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == env["BNSERVE_METRICS_PORT"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == int(env["BNSERVE_PORT"]), probe


def test_kserve_container_passes_the_core_container_schema():
    """The runtime's container is a core/v1 Container: validate it inside a throwaway Pod."""
    (runtime,) = load_documents(KSERVE_DIR / "servingruntime.yaml")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-container-check"},
        "spec": {"containers": runtime["spec"]["containers"]},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
