"""The terminal agent: poll the assignment with backoff, download with resume, verify, install, report."""

from __future__ import annotations

import base64
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from facefleet.terminal import AGENT_VERSION, collection
from facefleet.terminal.bundle import VerificationError, verify_card
from facefleet.terminal.client import DeviceApiError, DeviceClient
from facefleet.terminal.local import Identity, Terminal, VerifyResult, to_png, write_atomically

log = logging.getLogger("facefleet.terminal")


class TerminalAgent:
    """One terminal talking to the platform. ``run_once`` is one poll; ``run`` loops with backoff."""

    def __init__(
        self,
        terminal: Terminal,
        *,
        server_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        poll_interval: float = 5.0,
        max_backoff: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self.terminal = terminal
        self.rng = rng or random.Random()
        self.collection_counters = collection.CollectionCounters()
        self.transport = transport
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        identity = terminal.identity()
        self.server_url = server_url or (identity.server_url if identity else None)
        if not self.server_url:
            raise ValueError("give the server URL (--server) the first time a terminal starts")
        self._client: DeviceClient | None = None

    @property
    def client(self) -> DeviceClient:
        if self._client is None:
            identity = self.terminal.require_identity()
            self._client = DeviceClient(
                self.server_url or identity.server_url,
                credential=identity.credential,
                transport=self.transport,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def enroll_device(self, token: str) -> Identity:
        """Exchange the one-time token; pins the platform's public key. A no-op when already enrolled."""
        existing = self.terminal.identity()
        if existing is not None:
            return existing
        anonymous = DeviceClient(self.server_url or "", transport=self.transport)
        try:
            answer = anonymous.enroll(token)
        finally:
            anonymous.close()
        identity = Identity(
            server_url=self.server_url or "",
            device_id=answer["device_id"],
            name=answer["name"],
            group=answer["group"],
            credential=answer["credential"],
            public_key_pem=answer["public_key_pem"],
            adaptation_enabled=answer["adaptation_enabled"],
        )
        self.terminal.save_identity(identity)
        return identity

    # ---- one poll
    def run_once(self) -> str:
        """Heartbeat, fetch the assignment, act on it. Returns what happened."""
        self._heartbeat()
        assignment = self.client.assignment()
        self._follow_collection(assignment.get("collection"))
        action = assignment["action"]
        if action == "install":
            return self._install(assignment)
        if action == "rollback":
            return self._rollback(assignment)
        return "idle"

    def _heartbeat(self) -> None:
        answer = self.client.heartbeat(AGENT_VERSION, self.terminal.current_version_id(), self.health())
        identity = self.terminal.require_identity()
        if answer.get("adaptation_enabled") != identity.adaptation_enabled:  # an admin toggled the opt-in
            self.terminal.save_identity(
                identity.model_copy(update={"adaptation_enabled": answer["adaptation_enabled"]})
            )

    def health(self) -> dict[str, Any]:
        model = self.terminal.current_model()
        adaptation = self.terminal.adaptation_status() if model else None
        return {
            "users": len(self.terminal.db.users()),
            "previous_model_version_id": self.terminal.previous_version_id(),
            "adapted": bool(model and model.adapted),
            # updates applied / refused by the impostor-probe guard, probe FAR, resets, fallbacks
            "adaptation": adaptation.model_dump() if adaptation else None,
            "collection": self.collection_counters.as_health(),
        }

    # ---- collection of attempts for inspection (issue 13)
    def collection_settings(self) -> collection.CollectionSettings:
        return collection.load_settings(self.terminal.data_dir)

    def _follow_collection(self, part: dict[str, Any] | None) -> None:
        """Keep the assignment's collection settings on disk (absent: off)."""
        settings = collection.CollectionSettings.model_validate(part or {})
        if settings != self.collection_settings():
            path = self.terminal.data_dir / collection.COLLECTION_FILE
            write_atomically(path, settings.model_dump_json().encode())

    def verify(self, user: str, image: bytes | Image.Image) -> VerifyResult:
        """Verify on the terminal; upload the attempt when the collection settings select it.

        Collection never changes the answer: an upload the platform refuses (or that fails) is counted
        and logged, and the verification result stands.
        """
        image = to_png(image)
        result = self.terminal.verify_user(user, image)
        settings = self.collection_settings()
        counters = self.collection_counters
        if result.reason or not collection.should_upload(
            settings, match=result.match, score=result.score, threshold=result.threshold, rng=self.rng
        ):
            counters.not_selected += 1 if settings.enabled else 0
            return result
        body = self._attempt_body(result, image)
        if body is None:
            counters.not_selected += 1
            return result
        try:
            self.client.upload_attempt(body)
            counters.uploaded += 1
        except DeviceApiError as exc:
            counters.refused += 1
            counters.refusals[exc.status] = counters.refusals.get(exc.status, 0) + 1
            counters.last_error = str(exc)
            log.info("attempt not collected: %s", exc)
        except httpx.TransportError as exc:
            counters.failed += 1
            counters.last_error = str(exc)
            log.warning("attempt upload failed: %s", exc)
        return result

    def _attempt_body(self, result: VerifyResult, image: bytes) -> dict[str, Any] | None:
        model = self.terminal.current_model()
        sample = self.terminal.db.sample(result.sample_id) if result.sample_id is not None else None
        if model is None or sample is None:
            return None
        probe = collection.face_crop_png(model, image)
        reference = collection.face_crop_png(model, sample.image)
        if probe is None or reference is None:
            return None
        return collection.attempt_body(
            model_version_id=result.model_version_id,
            user=result.user,
            score=result.score,
            match=result.match,
            threshold=result.threshold,
            probe_png=probe,
            reference_png=reference,
        )

    def _install(self, assignment: dict[str, Any]) -> str:
        model, deployment_id = assignment["model"], assignment["deployment_id"]
        version_id = int(model["model_version_id"])
        if self.terminal.current_version_id() == version_id:
            if assignment["status"] != "installed":
                self.client.report(deployment_id, "installed", "already running this version")
            return "up_to_date"
        if assignment["status"] == "pending":
            self.client.report(deployment_id, "downloading")
        try:
            self._fetch_and_install(model)
        except VerificationError as exc:
            log.warning("model version %s refused: %s", version_id, exc)
            shutil.rmtree(self._download_dir(version_id), ignore_errors=True)
            self.client.report(deployment_id, "failed", str(exc))
            return "failed"
        self.client.report(deployment_id, "installed", f"model version {version_id} installed")
        return "installed"

    def _fetch_and_install(self, model: dict[str, Any]) -> None:
        """Check the signature first (cheap), then download, then verify + self-test + switch."""
        version_id = int(model["model_version_id"])
        card_bytes = base64.b64decode(model["card_b64"])
        card = verify_card(card_bytes, model["signature"], self.terminal.require_identity().public_key_pem)
        folder = self._download_dir(version_id)
        folder.mkdir(parents=True, exist_ok=True)
        for artifact in model["artifacts"]:
            name = artifact["file"]
            listed = card.artifacts.get(name)
            if listed is None or listed.sha256 != artifact["sha256"]:
                raise VerificationError(f"{name} in the assignment does not match the signed card")
            if Path(name).name != name:
                raise VerificationError(f"artifact name {name!r} is not a plain file name")
            part = folder / f"{name}.part"
            self.client.download(artifact["url"], part, int(listed.size))
            part.replace(folder / name)
        self.terminal.install(version_id, folder, card_bytes, model["signature"])
        shutil.rmtree(folder, ignore_errors=True)

    def _download_dir(self, version_id: int) -> Path:
        return self.terminal.data_dir / "downloads" / str(int(version_id))

    def _rollback(self, assignment: dict[str, Any]) -> str:
        """Return to the version the platform names (normally the one still running after a failure)."""
        model, deployment_id = assignment["model"], assignment["deployment_id"]
        target = None if model is None else int(model["model_version_id"])
        if target is not None and self.terminal.current_version_id() != target:
            if self.terminal.is_installed(target):
                self.terminal.switch_to(target)
            else:
                self._fetch_and_install(model)
        self.client.report(deployment_id, "rolled_back", f"running model version {target}")
        return "rolled_back"

    # ---- the loop
    def run(
        self,
        *,
        stop: threading.Event | None = None,
        max_polls: int | None = None,
        on_poll: Callable[[str], None] | None = None,
    ) -> None:
        """Poll forever (or ``max_polls`` times); network and server errors back off exponentially."""
        stop = stop or threading.Event()
        failures = polls = 0
        while not stop.is_set():
            try:
                outcome = self.run_once()
                failures, delay = 0, self.poll_interval
            except (httpx.TransportError, DeviceApiError) as exc:
                failures += 1
                outcome = f"error: {exc}"
                delay = min(self.max_backoff, self.poll_interval * 2**failures) * random.uniform(0.5, 1.0)
                log.warning("poll failed (%s); retrying in %.1fs", exc, delay)
            if on_poll:
                on_poll(outcome)
            polls += 1
            if max_polls is not None and polls >= max_polls:
                return
            stop.wait(delay) if delay > 0 else time.sleep(0)
