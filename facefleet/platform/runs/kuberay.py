"""The `kuberay` launcher's Kubernetes side: build, submit, watch and delete the RayJob of one run."""

from __future__ import annotations

import logging
import os
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from facefleet.platform.errors import ConflictError, FacefleetError, NotFoundError
from facefleet.platform.runs.entrypoint import entrypoint_command
from facefleet.platform.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Names shared with deploy/base (tests/deploy checks both sides agree).
CONFIGMAP_NAME = "facefleet-config"
SECRET_NAME = "facefleet-secrets"
SIGNING_KEY_SECRET_NAME = "facefleet-signing-key"
SIGNING_KEY_MOUNT_DIR = "/etc/facefleet/signing"
DATA_DIR = "/var/lib/facefleet"
RUN_AS_USER = 10001
RUN_ID_LABEL = "facefleet.io/run-id"
DATA_ACCESS_LABEL = "facefleet.io/data-access"
PART_OF_LABEL = "app.kubernetes.io/part-of"
COMPONENT_LABEL = "app.kubernetes.io/component"

RAYJOB_GROUP, RAYJOB_VERSION, RAYJOB_PLURAL = "ray.io", "v1", "rayjobs"
# The RayCluster (and its pods) are deleted this long after the job ends; the RayJob object stays until
# the launcher deletes it, so its status can still be read.
RAYJOB_CLUSTER_TTL_SECONDS = 300
FINISHED_DEPLOYMENT_STATUSES = frozenset({"Complete", "Failed"})


class RayJobStatus(BaseModel):
    """What KubeRay reports about one RayJob (`status` of the custom object)."""

    name: str
    job_status: str | None = None
    deployment_status: str | None = None
    reason: str | None = None
    message: str | None = None
    ray_cluster_name: str | None = None

    @property
    def finished(self) -> bool:
        return self.deployment_status in FINISHED_DEPLOYMENT_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.job_status == "SUCCEEDED"


def rayjob_name(run_id: int) -> str:
    """The RayJob's name for a run: a valid DNS-1123 label, stable so a resubmission finds the old one."""
    if run_id < 1:
        raise ValueError(f"run id must be positive, got {run_id}")
    return f"facefleet-run-{run_id}"


def _labels(component: str, run_id: int | None = None, *, data_access: bool = False) -> dict[str, str]:
    labels = {PART_OF_LABEL: "facefleet", COMPONENT_LABEL: component}
    if data_access:
        labels[DATA_ACCESS_LABEL] = "true"
    if run_id is not None:
        labels[RUN_ID_LABEL] = str(run_id)
    return labels


def _container_security_context(*, read_only_root: bool = True) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env_from() -> list[dict[str, Any]]:
    return [{"configMapRef": {"name": CONFIGMAP_NAME}}, {"secretRef": {"name": SECRET_NAME}}]


def _ray_container(name: str, image: str, *, cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "envFrom": _env_from(),
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "securityContext": _container_security_context(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "signing-key", "mountPath": SIGNING_KEY_MOUNT_DIR, "readOnly": True},
        ],
    }


def _ray_pod_template(
    container: dict[str, Any], run_id: int | None, *, shm_size: str, gpu: bool, head: bool = False
) -> dict[str, Any]:
    """A Ray node's pod: non-root, read-only root, writable /tmp (Ray's session dir) and shared memory."""
    spec: dict[str, Any] = {
        # The head's autoscaler sidecar scales the cluster through the Kubernetes API with the service
        # account KubeRay creates for it; workers need no token.
        "automountServiceAccountToken": head,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
            {"name": "data", "emptyDir": {}},
            {"name": "signing-key", "secret": {"secretName": SIGNING_KEY_SECRET_NAME, "defaultMode": 0o440}},
        ],
    }
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": _labels("ray", run_id, data_access=True)}, "spec": spec}


def _ray_cluster_spec(
    run_id: int | None, *, image: str, gpu_image: str, max_cpu_workers: int, max_gpu_workers: int
) -> dict[str, Any]:
    """Head (runs the training driver, schedules no training) + CPU and GPU groups scaled from zero."""
    head = _ray_container("ray-head", image, cpu="2", memory="4Gi")
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    cpu_worker = _ray_container("ray-worker", image, cpu="4", memory="16Gi")
    gpu_worker = _ray_container("ray-worker", gpu_image, cpu="8", memory="32Gi", gpus=1)
    return {
        "rayVersion": _ray_version(),
        "enableInTreeAutoscaling": True,
        # Token auth off: only facefleet pods may reach Ray pods (deploy/base/networkpolicies.yaml).
        "authOptions": {"mode": "disabled"},
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 120,
            "envFrom": [{"configMapRef": {"name": CONFIGMAP_NAME}}],
            "resources": {
                "requests": {"cpu": "200m", "memory": "512Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
            "securityContext": _container_security_context(read_only_root=False),
        },
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _ray_pod_template(head, run_id, shm_size="2Gi", gpu=False, head=True),
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu-workers",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": max_cpu_workers,
                "rayStartParams": {},
                "template": _ray_pod_template(cpu_worker, run_id, shm_size="4Gi", gpu=False),
            },
            {
                "groupName": "gpu-workers",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": max_gpu_workers,
                "rayStartParams": {},
                "template": _ray_pod_template(gpu_worker, run_id, shm_size="8Gi", gpu=True),
            },
        ],
    }


def _submitter_pod_template(run_id: int, image: str) -> dict[str, Any]:
    """The pod that runs `ray job submit` (KubeRay fills the command in), labelled for NetworkPolicies."""
    return {
        "metadata": {"labels": _labels("ray-submitter", run_id)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": image,
                    "envFrom": [{"configMapRef": {"name": CONFIGMAP_NAME}}],
                    "resources": {
                        "requests": {"cpu": "200m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                    "securityContext": _container_security_context(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def build_rayjob_manifest(
    run_id: int,
    *,
    settings: Settings | None = None,
    image: str | None = None,
    namespace: str | None = None,
    max_cpu_workers: int = 4,
    max_gpu_workers: int = 2,
) -> dict[str, Any]:
    """A `ray.io/v1` RayJob training run ``run_id`` on its own autoscaling RayCluster, deleted afterwards."""
    settings = settings or get_settings()
    image = image or settings.kuberay_image
    gpu_image = settings.kuberay_gpu_image or image
    name = rayjob_name(run_id)
    return {
        "apiVersion": f"{RAYJOB_GROUP}/{RAYJOB_VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": namespace or settings.kuberay_namespace,
            "labels": _labels("training-run", run_id),
        },
        "spec": {
            # The code is in the image: no runtime_env upload, the entrypoint is the module itself.
            "entrypoint": entrypoint_command(run_id),
            "jobId": name,
            "metadata": {"facefleet_run_id": str(run_id)},
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": RAYJOB_CLUSTER_TTL_SECONDS,
            # The run resumes from its checkpoint when relaunched; a blind retry here would double-count.
            "backoffLimit": 0,
            "submitterPodTemplate": _submitter_pod_template(run_id, image),
            "rayClusterSpec": _ray_cluster_spec(
                run_id,
                image=image,
                gpu_image=gpu_image,
                max_cpu_workers=max_cpu_workers,
                max_gpu_workers=max_gpu_workers,
            ),
        },
    }


def _ray_version() -> str:
    """The Ray version installed here, which is the image's (the API runs the same image as the job)."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "2.60.0"


def _custom_objects_api() -> Any:
    """CustomObjectsApi from the in-cluster service account, else the kubeconfig (KUBECONFIG honoured)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # Passed explicitly: the client reads KUBECONFIG only once, when it is first imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise FacefleetError(
                "no Kubernetes credentials: run the API in the cluster (service account) or set KUBECONFIG "
                f"for the kuberay launcher ({exc})",
                status_code=503,
            ) from exc
    return client.CustomObjectsApi()


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _describe(exc: Exception) -> str:
    return f"{getattr(exc, 'status', '?')} {getattr(exc, 'reason', exc)}"


def submit_rayjob(manifest: dict[str, Any], *, namespace: str) -> dict[str, Any]:
    """Create the RayJob; a RayJob of that name already existing is a ConflictError."""
    api = _custom_objects_api()
    try:
        created: dict[str, Any] = api.create_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, manifest
        )
    except _api_exception() as exc:
        name = manifest.get("metadata", {}).get("name")
        if getattr(exc, "status", None) == 409:
            raise ConflictError(
                f"RayJob {name} already exists in namespace {namespace}; delete it before resubmitting"
            ) from exc
        raise FacefleetError(f"creating RayJob {name} failed: {_describe(exc)}", status_code=502) from exc
    logger.info("submitted RayJob %s in %s", created["metadata"]["name"], namespace)
    return created


def get_rayjob_status(name: str, *, namespace: str) -> RayJobStatus:
    """Read the RayJob's status; NotFoundError when it does not exist."""
    api = _custom_objects_api()
    try:
        obj = api.get_namespaced_custom_object(RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name)
    except _api_exception() as exc:
        if getattr(exc, "status", None) == 404:
            raise NotFoundError(f"RayJob {name} not found in namespace {namespace}") from exc
        raise FacefleetError(f"reading RayJob {name} failed: {_describe(exc)}", status_code=502) from exc
    status = obj.get("status") or {}
    return RayJobStatus(
        name=name,
        job_status=status.get("jobStatus"),
        deployment_status=status.get("jobDeploymentStatus"),
        reason=status.get("reason"),
        message=status.get("message"),
        ray_cluster_name=status.get("rayClusterName"),
    )


def describe_status(status: RayJobStatus) -> str:
    """One line of what KubeRay reports, for a run's error (e.g. a submitter that never started)."""
    text = (
        f"RayJob {status.name}: job {status.job_status or 'not started'}, "
        f"deployment {status.deployment_status or 'unknown'}"
    )
    if status.reason:
        text += f", reason {status.reason}"
    if status.message:
        text += f": {status.message}"
    return text


def delete_rayjob(name: str, *, namespace: str) -> bool:
    """Delete the RayJob (its RayCluster and submitter go with it); False when it was already gone."""
    api = _custom_objects_api()
    try:
        api.delete_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name, propagation_policy="Background"
        )
    except _api_exception() as exc:
        if getattr(exc, "status", None) == 404:
            return False
        raise FacefleetError(f"deleting RayJob {name} failed: {_describe(exc)}", status_code=502) from exc
    logger.info("deleted RayJob %s in %s", name, namespace)
    return True
