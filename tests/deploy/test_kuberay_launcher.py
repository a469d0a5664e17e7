"""The kuberay launcher's RayJob validates against the KubeRay CRD; its client calls reach the API."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_checks import command_problem, validate_crd_object

from facefleet.platform.errors import ConflictError, FacefleetError, NotFoundError
from facefleet.platform.runs import kuberay
from facefleet.platform.settings import Settings


def test_manifest_validates_against_the_rayjob_crd() -> None:
    manifest = kuberay.build_rayjob_manifest(
        42, settings=Settings(kuberay_image="reg/facefleet:1", kuberay_gpu_image="reg/facefleet-cuda:1")
    )
    validate_crd_object(manifest)
    broken = {**manifest, "spec": {**manifest["spec"], "shutdownAfterJobFinish": True}}
    with pytest.raises(jsonschema.ValidationError):
        validate_crd_object(broken)


def test_manifest_runs_the_training_module_on_an_ephemeral_cluster() -> None:
    manifest = kuberay.build_rayjob_manifest(7, settings=Settings(), image="reg/facefleet:2", namespace="ml")
    spec = manifest["spec"]
    assert manifest["metadata"] == {
        "name": "facefleet-run-7",
        "namespace": "ml",
        "labels": {
            "app.kubernetes.io/part-of": "facefleet",
            "app.kubernetes.io/component": "training-run",
            "facefleet.io/run-id": "7",
        },
    }
    assert spec["entrypoint"] == "python -m facefleet.workers.train --run 7"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "clusterSelector" not in spec and "runtimeEnvYAML" not in spec
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for template in templates:
        assert template["metadata"]["labels"]["facefleet.io/run-id"] == "7"
        (container,) = template["spec"]["containers"]
        assert container["image"] == "reg/facefleet:2"
        assert container["envFrom"] == [
            {"configMapRef": {"name": kuberay.CONFIGMAP_NAME}},
            {"secretRef": {"name": kuberay.SECRET_NAME}},
        ]
    gpu = cluster["workerGroupSpecs"][1]
    assert (
        gpu["minReplicas"] == 0
        and gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )


def test_entrypoint_module_exists() -> None:
    entrypoint = kuberay.build_rayjob_manifest(1, settings=Settings())["spec"]["entrypoint"]
    assert command_problem(entrypoint.split()) is None


def test_rayjob_names_are_dns_labels() -> None:
    for run_id in (1, 99, 2**31):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?", kuberay.rayjob_name(run_id))
    with pytest.raises(ValueError):
        kuberay.rayjob_name(0)


class _RayJobApi(BaseHTTPRequestHandler):
    """The few custom-object endpoints of the Kubernetes API the launcher uses (no cluster here)."""

    store: dict[tuple[str, str], dict[str, Any]] = {}
    prefix = "/apis/ray.io/v1/namespaces/"

    def log_message(self, *args: Any) -> None:
        pass

    def _key(self) -> tuple[str, str] | None:
        match = re.fullmatch(r"/apis/ray\.io/v1/namespaces/([^/]+)/rayjobs(?:/([^/?]+))?(?:\?.*)?", self.path)
        return (match.group(1), match.group(2) or "") if match else None

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        namespace, _ = self._key() or ("", "")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = (namespace, body["metadata"]["name"])
        if key in self.store:
            return self._reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
        self.store[key] = body
        self._reply(201, body)

    def do_GET(self) -> None:  # noqa: N802
        key = self._key()
        if key not in self.store:
            return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        self._reply(
            200,
            {
                **self.store[key],
                "status": {
                    "jobStatus": "SUCCEEDED",
                    "jobDeploymentStatus": "Complete",
                    "rayClusterName": "facefleet-run-5-abcde",
                },
            },
        )

    def do_DELETE(self) -> None:  # noqa: N802
        key = self._key()
        if self.store.pop(key, None) is None:  # type: ignore[arg-type]
            return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        self._reply(200, {"kind": "Status", "status": "Success"})


@pytest.fixture
def kube_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[tuple[str, str], dict[str, Any]]]:
    _RayJobApi.store = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RayJobApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield _RayJobApi.store
    server.shutdown()
    server.server_close()


def test_submit_status_delete_round_trip(kube_api: dict[tuple[str, str], dict[str, Any]]) -> None:
    manifest = kuberay.build_rayjob_manifest(5, settings=Settings(), namespace="ml")
    created = kuberay.submit_rayjob(manifest, namespace="ml")
    assert created["metadata"]["name"] == "facefleet-run-5"
    assert kube_api[("ml", "facefleet-run-5")]["spec"]["entrypoint"] == manifest["spec"]["entrypoint"]
    with pytest.raises(ConflictError):
        kuberay.submit_rayjob(manifest, namespace="ml")
    status = kuberay.get_rayjob_status("facefleet-run-5", namespace="ml")
    assert status.finished and status.succeeded and status.ray_cluster_name == "facefleet-run-5-abcde"
    assert kuberay.delete_rayjob("facefleet-run-5", namespace="ml") is True
    assert kuberay.delete_rayjob("facefleet-run-5", namespace="ml") is False
    with pytest.raises(NotFoundError):
        kuberay.get_rayjob_status("facefleet-run-5", namespace="ml")


def test_no_credentials_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(FacefleetError, match="no Kubernetes credentials"):
        kuberay.get_rayjob_status("facefleet-run-1", namespace="facefleet")
