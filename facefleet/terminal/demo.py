"""The demo's last act: deploy a model to simulated terminals, then enroll and verify a user on each."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from PIL import Image

from facefleet.terminal.fleet import SimulatedFleet, register_devices


@contextmanager
def serve_in_background(app: Any, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the API did not start in time")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class TerminalDemoResult:
    terminal: str
    model_version_id: int | None
    genuine_match: bool
    genuine_score: float
    impostor_match: bool  # any impostor accepted
    impostor_score: float  # the highest impostor score
    threshold: float
    impostors_tried: int = 1
    impostors_accepted: int = 0


def deploy_to_simulated_terminals(
    server_url: str,
    admin_key: str,
    *,
    model_version_id: int,
    root: Path,
    enroll_images: list[Image.Image | bytes],
    genuine_image: Image.Image | bytes,
    impostor_image: Image.Image | bytes | Sequence[Image.Image | bytes],
    count: int = 2,
    group: str = "demo-terminals",
    user: str = "demo-user",
) -> list[TerminalDemoResult]:
    """Register ``count`` terminals, deploy (canary: one first), wait for the install, enroll + verify."""
    names = [f"{group}-{index}" for index in range(count)]
    tokens = register_devices(server_url, admin_key, group=group, names=names)
    fleet = SimulatedFleet(server_url, root)
    try:
        fleet.enroll(tokens)
        body = {
            "model_version_id": model_version_id,
            "group": group,
            "strategy": "canary",
            "canary_percent": 50,
        }
        response = httpx.post(
            f"{server_url}/v1/deployments", json=body, headers={"Authorization": f"Bearer {admin_key}"}
        )
        if response.status_code != 201:
            raise RuntimeError(f"deployment refused: {response.status_code} {response.text}")
        fleet.poll_until(lambda: set(fleet.current_versions().values()) == {model_version_id}, max_rounds=5)
        results = []
        for name, agent in fleet.agents.items():
            agent.terminal.enroll_user(user, list(enroll_images))
            genuine = agent.terminal.verify_user(user, genuine_image)
            impostor_images = (
                list(impostor_image)
                if isinstance(impostor_image, Sequence) and not isinstance(impostor_image, bytes)
                else [impostor_image]
            )
            impostors = [agent.terminal.verify_user(user, image) for image in impostor_images]
            accepted = sum(attempt.match for attempt in impostors)
            results.append(
                TerminalDemoResult(
                    name,
                    agent.terminal.current_version_id(),
                    genuine.match,
                    genuine.score,
                    accepted > 0,
                    max(attempt.score for attempt in impostors),
                    genuine.threshold,
                    impostors_tried=len(impostors),
                    impostors_accepted=accepted,
                )
            )
        return results
    finally:
        fleet.close()
