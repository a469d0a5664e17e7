"""A simulated fleet: N terminal agents in-process against a running API (tests and the demo)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from facefleet.terminal.adaptation import AdaptationConfig
from facefleet.terminal.agent import TerminalAgent
from facefleet.terminal.client import DeviceApiError
from facefleet.terminal.local import Terminal


def register_devices(
    server_url: str, admin_key: str, *, group: str, names: list[str], adaptation_enabled: bool = False
) -> dict[str, str]:
    """Register devices through the admin API; returns name -> one-time enrollment token."""
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {admin_key}"}) as http:
        for name in names:
            response = http.post(
                "/v1/devices", json={"name": name, "group": group, "adaptation_enabled": adaptation_enabled}
            )
            if response.status_code != 201:
                raise DeviceApiError(response.status_code, response.text)
            tokens[name] = response.json()["enrollment_token"]
    return tokens


class SimulatedFleet:
    """Terminals under ``root/<name>``; ``poll`` runs one poll on each, in order."""

    def __init__(
        self,
        server_url: str,
        root: Path,
        *,
        transport: httpx.BaseTransport | None = None,
        adaptation: AdaptationConfig | None = None,
    ) -> None:
        self.server_url = server_url
        self.root = Path(root)
        self.transport = transport
        self.adaptation = adaptation
        self.agents: dict[str, TerminalAgent] = {}

    def enroll(self, tokens: dict[str, str]) -> None:
        for name, token in tokens.items():
            terminal = Terminal(self.root / name, adaptation=self.adaptation)
            agent = TerminalAgent(
                terminal, server_url=self.server_url, transport=self.transport, poll_interval=0
            )
            agent.enroll_device(token)
            self.agents[name] = agent

    def poll(self, names: list[str] | None = None) -> dict[str, str]:
        """One poll per agent; errors are returned as outcomes (a fleet keeps going)."""
        outcomes: dict[str, str] = {}
        for name in names or list(self.agents):
            try:
                outcomes[name] = self.agents[name].run_once()
            except (httpx.TransportError, DeviceApiError) as exc:
                outcomes[name] = f"error: {exc}"
        return outcomes

    def poll_until(self, done: Callable[[], bool], *, max_rounds: int = 10) -> int:
        """Poll rounds until ``done()``; returns the rounds used (raises when it never happens)."""
        for round_number in range(1, max_rounds + 1):
            self.poll()
            if done():
                return round_number
        raise TimeoutError(f"fleet did not converge in {max_rounds} rounds")

    def current_versions(self) -> dict[str, int | None]:
        return {name: agent.terminal.current_version_id() for name, agent in self.agents.items()}

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
