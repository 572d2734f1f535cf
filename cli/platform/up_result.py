"""What `dcluster up` answers: where the platform is reached, its files, and how to sign in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cli.platform import state


@dataclasses.dataclass
class UpResult:
    already_running: bool
    api_url: str
    docs_url: str
    state_dir: Path
    admin_credentials: Path
    credentials: Path
    agent_logs: list[Path]
    ray_dashboard_url: str
    timings_s: dict[str, float]
    tls_fingerprint: str | None = None

    def lines(self) -> list[str]:
        head = "platform already running" if self.already_running else "platform is up"
        out = [
            f"{head}: {self.api_url}",
            f"  API docs:          {self.docs_url}",
            f"  admin credentials: {self.admin_credentials}",
            f"  local accounts:    {self.credentials}",
            f"  Ray dashboard:     {self.ray_dashboard_url}",
        ]
        if self.tls_fingerprint:
            out += [
                f"  TLS CA fingerprint: {self.tls_fingerprint}",
                f"  sign in with:      dcluster login --url {self.api_url} --fingerprint {self.tls_fingerprint}",
            ]
        out += [f"  agent log:         {p}" for p in self.agent_logs]
        return out


def of(record: dict, layout: state.Layout, *, already_running: bool, timings: dict) -> UpResult:
    api_url = state.public_url(record)
    return UpResult(
        already_running=already_running,
        api_url=api_url,
        docs_url=f"{api_url}/docs",
        state_dir=layout.state_dir,
        admin_credentials=layout.admin_credentials_json,
        credentials=layout.credentials_json,
        agent_logs=[Path(a["log"]) for a in record.get("agents", [])],
        ray_dashboard_url=f"http://127.0.0.1:{record['ray_ports']['dashboard']}",
        timings_s=timings,
        tls_fingerprint=state.tls_fingerprint(record),
    )
