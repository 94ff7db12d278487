"""The Kubernetes manifests render with kustomize, validate against the API schemas offline, and fit
together: selectors match pods, probes hit the service's health endpoints, the drain fits the grace
period, the environment is what resnet-serve parses."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service import config as serve_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SERVING = ("k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu")
# The oldest release still widely run and the newest schema set kubernetes-validate 1.37 ships: the
# manifests use no field newer than 1.30 (autoscaling/v2, policy/v1, indexed Jobs are older).
KUBERNETES_VERSIONS = ("1.30", "1.37")
EXTERNAL_CLAIMS = {"imagenet"}  # the dataset volume the cluster already has (deploy/k8s/training)


def server(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


@pytest.mark.parametrize("name", ["k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/training"])
def test_every_resource_validates_strictly_against_the_kubernetes_schemas(rendered, name):
    assert rendered[name], f"{name} rendered no resources"
    for version in KUBERNETES_VERSIONS:
        for doc in rendered[name]:
            # strict: an unknown or misspelled field is an error, not silently dropped by the API server
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelled_field(rendered, of_kind):
    (deployment,) = of_kind(rendered["k8s/overlays/cpu"], "Deployment")
    broken = copy.deepcopy(deployment)
    server(broken)["readinesProbe"] = server(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_yaml_file_under_k8s_is_part_of_a_kustomization():
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        listed.add(kustomization)
        for entry in spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]:
            listed.add((kustomization.parent / entry).resolve())
    orphans = [p for p in K8S.rglob("*.yaml") if p.resolve() not in listed and p not in listed]
    assert not orphans, f"manifests no kustomization renders (so no test validates): {orphans}"


@pytest.mark.parametrize("name", SERVING)
def test_service_pdb_and_hpa_point_at_the_deployment_pods(rendered, of_kind, name):
    docs = rendered[name]
    (deployment,) = of_kind(docs, "Deployment")
    (service,) = of_kind(docs, "Service")
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot survive its own eviction"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    port_names = {p["name"] for p in server(deployment)["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names


def test_cpu_and_gpu_variants_select_only_their_own_pods(rendered, of_kind):
    pods = {v: of_kind(rendered[f"k8s/overlays/{v}"], "Deployment")[0] for v in ("cpu", "gpu")}
    for variant, other in (("cpu", "gpu"), ("gpu", "cpu")):
        (service,) = of_kind(rendered[f"k8s/overlays/{variant}"], "Service")
        other_labels = pods[other]["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= other_labels.items()
        names = {doc["metadata"]["name"] for doc in rendered[f"k8s/overlays/{variant}"]}
        assert names.isdisjoint(d["metadata"]["name"] for d in rendered[f"k8s/overlays/{other}"])


@pytest.mark.parametrize("name", SERVING + ("k8s/training",))
def test_every_claimed_volume_is_created_alongside(rendered, of_kind, name):
    docs = rendered[name]
    claims = {doc["metadata"]["name"] for doc in of_kind(docs, "PersistentVolumeClaim")}
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for volume in workload["spec"]["template"]["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims | EXTERNAL_CLAIMS, f"{name}: claim {claim!r} is created nowhere"


@pytest.mark.parametrize("name", SERVING)
def test_probes_use_the_health_endpoints_and_the_drain_fits_the_grace_period(rendered, of_kind, name):
    (deployment,) = of_kind(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]
    container = server(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env_of(container).get("RESNET_SERVE_DRAIN_TIMEOUT_S", serve_config.ServeConfig.drain_timeout_s))
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()


@pytest.mark.parametrize("name", SERVING)
def test_the_server_environment_is_what_resnet_serve_parses(rendered, of_kind, name):
    (deployment,) = of_kind(rendered[name], "Deployment")
    container = server(deployment)
    env = env_of(container)
    fields = {serve_config.ENV_PREFIX + f.upper() for f in serve_config.ServeConfig.__dataclass_fields__}
    assert {k for k in env if k.startswith(serve_config.ENV_PREFIX)} <= fields
    parsed = serve_config.parse([], environ=env)  # raises ConfigError on a bad value
    assert parsed.port == container["ports"][0]["containerPort"]
    assert str(parsed.models) in {m["mountPath"] for m in container["volumeMounts"]}


def test_only_the_gpu_variant_asks_for_a_gpu_and_prefers_cuda(rendered, of_kind):
    (gpu,) = of_kind(rendered["k8s/overlays/gpu"], "Deployment")
    (cpu,) = of_kind(rendered["k8s/overlays/cpu"], "Deployment")
    assert server(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert serve_config.parse([], environ=env_of(server(gpu))).providers[0] == "cuda"
    assert "nvidia.com/gpu" not in server(cpu)["resources"]["limits"]
    assert server(gpu)["image"].endswith(":gpu") and server(cpu)["image"].endswith(":cpu")
    tolerations = gpu["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("name", SERVING[1:])
def test_a_network_policy_admits_only_labelled_callers_and_the_metrics_scraper_to_the_serving_pods(
    rendered, of_kind, name
):
    (deployment,) = of_kind(rendered[name], "Deployment")
    (policy,) = of_kind(rendered[name], "NetworkPolicy")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress is left to the cluster's own policies
    port_names = {p["name"] for p in server(deployment)["ports"]}
    peers = []
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "a rule without `from` admits every source"
        assert {p["port"] for p in rule["ports"]} <= port_names
        peers += rule["from"]
    # A caller pod needs only the client label: the overlays' variant label must not have crept in.
    (pods,) = [p["podSelector"] for p in peers if "podSelector" in p]
    assert "matchLabels" not in pods
    assert pods["matchExpressions"] == [{"key": "resnet-serving/client", "operator": "In", "values": ["true"]}]
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in peers if "namespaceSelector" in p]
    assert namespaces == [{"resnet-serving/client": "true"}, {"resnet-serving/metrics": "true"}]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tool) -> dict[str, list[dict]]:
    """The cpu and gpu overlays and the KServe service with components/api-keys added, as a user adds it
    (in a copy of deploy/k8s: kustomize refuses absolute paths)."""
    import shutil
    import subprocess

    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    out = {}
    for name, base, component in [("cpu", "overlays/cpu", "../../components/api-keys"),
                                  ("gpu", "overlays/gpu", "../../components/api-keys"),
                                  ("kserve", "kserve", "../../components/api-keys")]:  # fmt: skip
        folder = root / "keyed" / name
        folder.mkdir(parents=True)
        spec = {"resources": [f"../../{base}"], "components": [component]}
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(spec))
        done = subprocess.run([tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        out[name] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return out


@pytest.mark.parametrize("name", ["cpu", "gpu", "kserve"])
def test_the_api_keys_component_mounts_the_secret_where_resnet_serve_reads_its_keys(keyed, of_kind, name):
    docs = keyed[name]
    if name == "kserve":
        (isvc,) = of_kind(docs, "InferenceService")
        pod = {k: v for k, v in isvc["spec"]["predictor"].items() if k in ("containers", "volumes", "securityContext")}
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}, version, strict=True
            )
        container = pod["containers"][0]
    else:
        (deployment,) = of_kind(docs, "Deployment")
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(deployment, version, strict=True)
        pod, container = deployment["spec"]["template"]["spec"], server(deployment)
    config = serve_config.parse([], environ={k: v for k, v in env_of(container).items() if k.startswith("RESNET_")})
    keys_file = Path(config.api_keys_file)
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "resnet-serve-api-keys"  # not renamed by the overlay's suffix
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the keys must not be readable by other users"
    assert "optional" not in volume["secret"], "a keyed service must wait for its Secret, not start open"


def test_without_the_component_no_pod_needs_a_secret(rendered, of_kind):
    for name in SERVING:
        (deployment,) = of_kind(rendered[name], "Deployment")
        assert all("secret" not in v for v in deployment["spec"]["template"]["spec"]["volumes"])
        assert "RESNET_SERVE_API_KEYS_FILE" not in env_of(server(deployment))
