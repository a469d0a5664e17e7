"""The Kustomize overlays render, validate strictly, and say what the deploy design promises."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_checks import (
    DEPLOY,
    KUBERNETES_VERSION,
    OVERLAYS,
    command_problem,
    find,
    one,
    render,
    validate_crd_object,
)

from facefleet.platform.runs import kuberay

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload, including each RayCluster group."""
    specs = [
        (o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objects if o["kind"] in WORKLOAD_KINDS
    ]
    for cluster in find(objects, "RayCluster"):
        specs.append(
            (f"{cluster['metadata']['name']}/head", cluster["spec"]["headGroupSpec"]["template"]["spec"])
        )
        for group in cluster["spec"]["workerGroupSpecs"]:
            specs.append((f"{cluster['metadata']['name']}/{group['groupName']}", group["template"]["spec"]))
    return specs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    from kubernetes_validate import utils

    objects = rendered[overlay]
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith("ray.io/"):
            validate_crd_object(obj)
        else:
            utils.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_typo_fails_both_validators(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The validators are strict: an unknown field is an error, not silently dropped."""
    import jsonschema
    from kubernetes_validate import utils

    api = dict(one(rendered["dev"], "Deployment", "facefleet-api"))
    api["spec"] = {**api["spec"], "replica": 2}
    with pytest.raises(utils.ValidationError):
        utils.validate(api, KUBERNETES_VERSION, strict=True)
    cluster = dict(one(rendered["dev"], "RayCluster", "facefleet-ray"))
    cluster["spec"] = {**cluster["spec"], "enableInTreeAutoscaler": True}
    with pytest.raises(jsonschema.ValidationError):
        validate_crd_object(cluster)


def test_base_renders_on_its_own() -> None:
    assert find(render(DEPLOY / "base"), "RayCluster", "facefleet-ray")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_command_exists(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    problems = [
        f"{name}: {command_problem(container['command'])}"
        for name, spec in pod_specs(rendered[overlay])
        for container in spec["containers"]
        if "facefleet" in container["image"]
        and "command" in container
        and command_problem(container["command"]) is not None
    ]
    assert not problems, problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for name, spec in pod_specs(rendered[overlay]):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        mounts_by_volume = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["limits"] and container["resources"]["requests"], name
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in mounts_by_volume[tmp[0]["name"]], f"{name}: /tmp must be an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_service(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    api = one(objects, "Deployment", "facefleet-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["command"][:2] == ["facefleet", "serve"]
    service = one(objects, "Service", "facefleet-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["type"] == "ClusterIP"
    assert one(objects, "Job", "facefleet-migrate")["spec"]["template"]["spec"]["containers"][0][
        "command"
    ] == ["facefleet", "db", "upgrade"]


def test_role_allows_rayjobs_and_nothing_more(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for objects in rendered.values():
        roles = find(objects, "Role") + find(objects, "ClusterRole")
        assert [r["metadata"]["name"] for r in roles] == ["facefleet-rayjob-launcher"]
        (rule,) = roles[0]["rules"]
        assert rule == {
            "apiGroups": ["ray.io"],
            "resources": ["rayjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        }
        binding = one(objects, "RoleBinding", "facefleet-rayjob-launcher")
        assert {s["name"] for s in binding["subjects"]} == {"facefleet-api", "facefleet-scheduler"}
        assert not find(objects, "ClusterRoleBinding")
        accounts = {
            d["metadata"]["name"]: d["spec"]["template"]["spec"].get("serviceAccountName")
            for d in find(objects, "Deployment")
        }
        assert accounts == {"facefleet-api": "facefleet-api", "facefleet-scheduler": "facefleet-scheduler"}


def _policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p["spec"] for p in find(objects, "NetworkPolicy")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    policies = _policies(objects)
    deny = policies["default-deny-all"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # Only the API accepts traffic from anywhere (an ingress rule without `from`).
    open_to_all = [
        name for name, spec in policies.items() if any("from" not in rule for rule in spec.get("ingress", []))
    ]
    assert open_to_all == ["api-ingress"]
    assert policies["api-ingress"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "api"}}
    # Only data-access pods get egress beyond DNS and the Ray Jobs API.
    unrestricted_egress = [
        name
        for name, spec in policies.items()
        if any("to" not in rule and "ports" not in rule for rule in spec.get("egress", []))
    ]
    assert unrestricted_egress == ["data-access-egress"]
    selected = policies["data-access-egress"]["podSelector"]["matchLabels"]
    components = {
        name: spec.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
        for name, spec in _pod_templates(objects)
        if _labels_match(spec, selected)
    }
    assert set(components.values()) == {"api", "scheduler", "migrate", "ray"}, components


def test_dev_data_servers_accept_only_data_access_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = _policies(rendered["dev"])
    for name, port in (("postgres-ingress", 5432), ("minio-ingress", 9000)):
        (rule,) = policies[name]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        assert rule["from"][0] == {"podSelector": {"matchLabels": {"facefleet.io/data-access": "true"}}}
        assert all(set(peer) == {"podSelector"} for peer in rule["from"]), "no namespace or IP peers"
    assert "postgres-ingress" not in _policies(rendered["prod"])
    assert not find(rendered["prod"], "StatefulSet"), "prod uses external PostgreSQL and S3"


def _pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    templates = [
        (o["metadata"]["name"], o["spec"]["template"]) for o in objects if o["kind"] in WORKLOAD_KINDS
    ]
    for cluster in find(objects, "RayCluster"):
        templates.append(("head", cluster["spec"]["headGroupSpec"]["template"]))
        templates += [(g["groupName"], g["template"]) for g in cluster["spec"]["workerGroupSpecs"]]
    return templates


def _labels_match(template: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = template.get("metadata", {}).get("labels", {})
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_groups(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    spec = one(rendered[overlay], "RayCluster", "facefleet-ray")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    assert all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in groups.values())
    gpu_pod = groups["gpu-workers"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    assert "facefleet-cuda" in gpu_pod["containers"][0]["image"]
    assert (
        "nvidia.com/gpu"
        not in groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_base_raycluster_is_the_launchers_cluster() -> None:
    """deploy/base/raycluster.yaml and build_rayjob_manifest describe the same cluster."""
    base = one(render(DEPLOY / "base"), "RayCluster", "facefleet-ray")["spec"]
    built = kuberay._ray_cluster_spec(
        None, image="facefleet:0.1.0", gpu_image="facefleet-cuda:0.1.0", max_cpu_workers=4, max_gpu_workers=2
    )
    base.pop("rayVersion")
    built.pop("rayVersion")
    assert base == built


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_names_and_images_agree_with_the_launcher(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    config = one(objects, "ConfigMap", kuberay.CONFIGMAP_NAME)["data"]
    api_image = one(objects, "Deployment", "facefleet-api")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    assert config["FACEFLEET_KUBERAY_IMAGE"] == api_image
    gpu_group = one(objects, "RayCluster", "facefleet-ray")["spec"]["workerGroupSpecs"][1]
    assert config["FACEFLEET_KUBERAY_GPU_IMAGE"] == gpu_group["template"]["spec"]["containers"][0]["image"]
    assert config["FACEFLEET_KUBERAY_NAMESPACE"] == one(objects, "Namespace", "facefleet")["metadata"]["name"]
    assert config["FACEFLEET_SIGNING_KEY_PATH"].startswith(kuberay.SIGNING_KEY_MOUNT_DIR + "/")
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            if "facefleet" not in container["image"]:
                continue
            refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            assert kuberay.CONFIGMAP_NAME in refs, name
    secrets = {s["metadata"]["name"] for s in find(objects, "Secret")}
    if overlay == "prod":
        assert not secrets, "prod expects externally created Secrets"
    else:
        assert kuberay.SECRET_NAME in secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_workers_fit_the_cpu_limit_and_pools_fit_postgres(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """FACEFLEET_API_WORKERS and the pool settings are valid, one worker per CPU of the API's limit."""
    from facefleet.platform.settings import Settings

    objects = rendered[overlay]
    config = one(objects, "ConfigMap", kuberay.CONFIGMAP_NAME)["data"]
    keys = ("api_workers", "db_pool_size", "db_max_overflow", "api_max_queue", "api_max_wait_seconds")
    settings = Settings(**{key: config[f"FACEFLEET_{key.upper()}"] for key in keys})  # type: ignore[arg-type]
    api = one(objects, "Deployment", "facefleet-api")["spec"]
    cpu_limit = api["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    cpus = float(cpu_limit[:-1]) / 1000 if cpu_limit.endswith("m") else float(cpu_limit)
    assert settings.api_workers == max(1, int(cpus))
    per_process = settings.db_pool_size + settings.db_max_overflow
    api_connections = api.get("replicas", 1) * settings.api_workers * per_process
    assert api_connections + 2 * per_process <= 100  # PostgreSQL's default max_connections, with schedulers
