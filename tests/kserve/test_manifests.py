"""The deployment manifests, validated offline: the Kubernetes objects against
the OpenAPI schemas of Kubernetes 1.37 (kubernetes-validate, strict: an unknown
field fails), KServe's objects against the types of KServe's own SDK (every
field must be one the type declares, recursively, and each model is built with
its required fields), and the custom resources of the Prometheus Operator and
KEDA against what they point at."""

import pathlib
import re

import kubernetes.client.models as k8s
import kserve.models
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
VERSION = "1.37.0"


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# The patches are JSON patches (lists), checked through the objects they patch.
OBJECTS = [(f, d) for f in sorted(K8S.glob("*.yaml")) if not f.name.startswith("patch-") for d in docs(f)]
CORE = [(f, d) for f, d in OBJECTS if d.get("kind") not in ("Kustomization", "ServiceMonitor", "ScaledObject")]


def test_every_manifest_is_listed_or_a_patch():
    kinds = {d.get("kind") for _, d in OBJECTS}
    assert {"Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim", "HorizontalPodAutoscaler",
            "ServiceMonitor", "ScaledObject", "Kustomization"} <= kinds, kinds
    assert len(CORE) >= 5


@pytest.mark.parametrize("path,doc", CORE, ids=[f"{f.name}:{d['kind']}" for f, d in CORE])
def test_kubernetes_objects_match_the_openapi_schemas(path, doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("patch-*.yaml")))
def test_patches_apply_to_the_deployment(name):
    """Each JSON patch's paths exist in the Deployment, and what it yields is
    still a valid Deployment."""
    import copy

    deployment = copy.deepcopy(docs(K8S / "deployment.yaml")[0])
    for op in docs(K8S / name)[0]:
        parts = [int(p) if p.isdigit() else p for p in op["path"].strip("/").split("/")]
        parent = deployment
        for p in parts[:-1]:
            parent = parent[p]
        last = parts[-1]
        if op["op"] == "replace":
            parent[last]  # must exist
            parent[last] = op["value"]
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else last, op["value"])
            else:
                parent[last] = op["value"]
        else:
            pytest.fail(f"{name}: op {op['op']}")
    kubernetes_validate.validate(deployment, VERSION, strict=True)


def test_kustomization_lists_files_that_exist():
    k = docs(K8S / "kustomization.yaml")[0]
    for r in k["resources"]:
        assert (K8S / r).is_file(), r


def model_class(name):
    return getattr(kserve.models, name, None) or getattr(k8s, name)


def check(value, type_name, where):
    """Walks `value` as the SDK type `type_name` declares it: an unknown field
    anywhere fails with its path."""
    t = type_name.strip()
    m = re.fullmatch(r"(?:list\[|List\[)(.+)\]", t)
    if m:
        assert isinstance(value, list), f"{where}: not a list"
        for i, v in enumerate(value):
            check(v, m.group(1), f"{where}[{i}]")
        return
    m = re.fullmatch(r"(?:dict\(str, ?|Dict\[str, ?)(.+)[\)\]]", t)
    if m:
        assert isinstance(value, dict), f"{where}: not a map"
        for k, v in value.items():
            check(v, m.group(1), f"{where}.{k}")
        return
    if t in ("str", "int", "bool", "float", "object", "datetime", "date"):
        if t == "str":
            assert isinstance(value, str), f"{where}: {value!r} is not a string"
        return
    cls = model_class(t)
    assert isinstance(value, dict), f"{where}: not an object ({t})"
    by_json = {v: k for k, v in cls.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        assert key in by_json, f"{where}: {t} has no field {key!r}"
        attr = by_json[key]
        check(v, cls.openapi_types[attr], f"{where}.{key}")
        kwargs[attr] = v
    # Building it checks the required fields and the enums the SDK knows.
    cls(**kwargs)


@pytest.mark.parametrize("name,kind", [
    ("clusterservingruntime.yaml", "V1alpha1ClusterServingRuntime"),
    ("inferenceservice.yaml", "V1beta1InferenceService"),
])
def test_kserve_objects_match_the_sdk_types(name, kind):
    doc = docs(KSERVE / name)[0]
    check(doc, kind, name)


def test_the_walker_finds_a_misspelt_field():
    doc = docs(KSERVE / "clusterservingruntime.yaml")[0]
    doc["spec"]["protocolVersion"] = doc["spec"].pop("protocolVersions")
    with pytest.raises(AssertionError, match="protocolVersion"):
        check(doc, "V1alpha1ClusterServingRuntime", "x")


def test_the_runtime_speaks_what_kserve_selects_it_for():
    spec = docs(KSERVE / "clusterservingruntime.yaml")[0]["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2", "v1"}
    onnx = next(f for f in spec["supportedModelFormats"] if f["name"] == "onnx")
    # KServe selects the highest priority among auto-selected runtimes: onnx
    # models stay with Triton and OpenVINO unless Switchyard is asked for.
    assert onnx["autoSelect"] is False and "priority" not in onnx
    own = next(f for f in spec["supportedModelFormats"] if f["name"] == "switchyard")
    assert own["autoSelect"] is True
    isvc = docs(KSERVE / "inferenceservice.yaml")[0]
    assert isvc["spec"]["predictor"]["model"]["runtime"] == docs(KSERVE / "clusterservingruntime.yaml")[0]["metadata"]["name"]


def test_custom_resources_point_at_what_exists():
    service = docs(K8S / "service.yaml")[0]
    deployment = docs(K8S / "deployment.yaml")[0]
    monitor = docs(K8S / "servicemonitor.yaml")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    for k, v in monitor["spec"]["selector"]["matchLabels"].items():
        assert labels.get(k) == v, f"the ServiceMonitor selects {k}={v}, the Service has {labels}"
    ports = {p["name"] for p in service["spec"]["ports"]}
    for e in monitor["spec"]["endpoints"]:
        assert e["port"] in ports
        assert e.get("path", "/metrics") == "/metrics"
    scaled = docs(K8S / "keda-scaledobject.yaml")[0]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert all(t["type"] == "prometheus" for t in scaled["spec"]["triggers"])
    hpa = docs(K8S / "hpa-prometheus-adapter.yaml")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
