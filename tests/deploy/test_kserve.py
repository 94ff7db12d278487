"""deploy/k8s/kserve: the KServe InferenceService renders with kustomize and holds together offline.

No schema for KServe's CRD ships with kubernetes-validate, so the check is in two parts: the
predictor's own fields are the ones KServe's v1beta1 PredictorSpec defines (ComponentExtensionSpec
plus the embedded PodSpec), and everything that is a PodSpec validates strictly against the
Kubernetes schema, inside a Pod. Then: protocol v2, the same probes, image and environment as the
Deployment of deploy/k8s/base, a models volume the service is pointed at, and a NetworkPolicy over
the predictor's pods.
"""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest
import yaml

from service import config as serve_config
from tests.deploy.conftest import DEPLOY, find_tool, pick
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, env_of, server

# kserve pkg/apis/serving/v1beta1/component.go, ComponentExtensionSpec (plus the predictor's own).
EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
    "autoScaling",
}  # fmt: skip


@pytest.fixture(scope="module")
def isvc() -> dict:
    kubectl = find_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s/kserve")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "NetworkPolicy"]
    (doc,) = pick(docs, "InferenceService")
    return doc


@pytest.fixture(scope="module")
def policy() -> dict:
    result = subprocess.run([find_tool("kubectl"), "kustomize", str(DEPLOY / "k8s/kserve")], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    (doc,) = pick([d for d in yaml.safe_load_all(result.stdout) if d], "NetworkPolicy")
    return doc


@pytest.fixture(scope="module")
def base_container(rendered) -> dict:
    (deployment,) = pick(rendered["k8s/overlays/cpu"], "Deployment")
    return server(deployment)


def test_it_is_one_v1beta1_inference_service_with_a_custom_container_predictor(isvc):
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert list(isvc["spec"]) == ["predictor"]
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks its predictor up by
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_the_predictors_pod_spec_validates_strictly_and_no_field_is_unknown(isvc):
    predictor = dict(isvc["spec"]["predictor"])
    extension = {key: predictor.pop(key) for key in list(predictor) if key in EXTENSION_FIELDS}
    assert extension["minReplicas"] <= extension["maxReplicas"] and extension["scaleMetric"] in ("cpu", "memory")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": predictor}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)  # an unknown key fails here


def test_it_speaks_protocol_v2_with_the_same_probes_and_image_as_the_deployment(isvc, base_container):
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert env_of(container)["PROTOCOL"] == "v2"
    for key in ("image", "ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle", "resources"):
        assert container[key] == base_container[key], key
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_the_environment_is_what_resnet_serve_parses_and_points_at_the_models_volume(isvc):
    (container,) = isvc["spec"]["predictor"]["containers"]
    env = {k: v for k, v in env_of(container).items() if k.startswith(serve_config.ENV_PREFIX)}
    config = serve_config.parse([], environ=env)  # raises on a misspelled or invalid variable
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in isvc["spec"]["predictor"]["volumes"]}
    assert volumes[mounts[str(config.models)]]["persistentVolumeClaim"]["claimName"] == "resnet-models"


def test_the_network_policy_selects_the_predictor_pods_and_admits_callers_and_the_scraper_on_its_port(isvc, policy):
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(policy, version, strict=True)
    # KServe labels the predictor's pods with the InferenceService's name.
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    (container,) = isvc["spec"]["predictor"]["containers"]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"] and [p["port"] for p in rule["ports"]] == [container["ports"][0]["containerPort"]]
    # The same callers as the Deployment's policy (tests/deploy/test_manifests.py).
    callers = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"]
    assert callers == [{"key": "resnet-serving/client", "operator": "In", "values": ["true"]}]
