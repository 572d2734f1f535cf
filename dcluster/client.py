"""dcluster.Client: the one synchronous HTTP client of the platform API (buyers' SDK, the dcluster CLI, the agent)."""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from dcl_core import api, domain, protocol
from dcluster import errors, tls

logger = logging.getLogger(__name__)

USER_AGENT = "dcluster/0.1"
# A JSON object as the API answers it.
JsonObject = dict[str, Any]


def _detail(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _items(body: Any) -> list[JsonObject]:
    # List endpoints may answer a bare list or an {"items": [...]} envelope.
    if isinstance(body, dict) and "items" in body:
        body = body["items"]
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body or []):
        raise errors.ApiError(200, f"expected a list of objects, got {str(body)[:200]!r}")
    return list(body)


def _object(body: Any) -> JsonObject:
    if not isinstance(body, dict):
        raise errors.ApiError(200, f"expected a JSON object, got {str(body)[:200]!r}")
    return body


def _text(body: Any) -> str:
    if not isinstance(body, str):
        raise errors.ApiError(200, f"expected text, got {str(body)[:200]!r}")
    return body


def _machine_path(machine_id: str) -> str:
    return "/v1/machines/" + quote(str(machine_id), safe="")


def _cluster_path(cluster_id: str, suffix: str = "") -> str:
    return "/v1/clusters/" + quote(str(cluster_id), safe="") + suffix


@dataclasses.dataclass(frozen=True)
class Probe:
    """The platform's answer to GET /healthz: status, body, its Date header, the round trip."""

    status_code: int
    body: Any
    server_date: datetime | None
    round_trip_s: float


class PlatformApi(Protocol):
    """What the agent needs from the platform; dcluster.Client implements it, test fakes too."""

    def login(self, username: str, password: str) -> str: ...

    def set_token(self, token: str | None) -> None: ...

    def register_machine(
        self,
        machine_key: str,
        name: str,
        spec: domain.MachineSpec,
        price_per_gpu_hour: float = 0.0,
        price_per_cpu_hour: float = 0.0,
    ) -> JsonObject: ...

    def heartbeat(self, machine_id: str, usage: domain.MachineUsage, leases: Sequence[str] = ()) -> JsonObject: ...

    def poll_work(self, machine_id: str, wait_s: float = protocol.LONG_POLL_S) -> list[JsonObject]: ...

    def leave(self, machine_id: str, *, timeout_s: float | None = None) -> JsonObject: ...

    def post_result(self, machine_id: str, item_id: str, result: JsonObject) -> JsonObject: ...


class Client:
    """All calls to the platform's HTTP API go through here; never logs a password or token.

    `token`: a JWT to send from the start (a saved session's); else `login` gets one. `trust`: the pinned
    certificate authority of an https platform (default: the system's trust store).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        trust: tls.Trust | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.trust = trust or tls.Trust()
        self._timeout = httpx.Timeout(timeout_s)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self._timeout,
            transport=transport,
            verify=self.trust.verify(),
            headers={"User-Agent": USER_AGENT},
        )
        self._token = token
        self._credentials: tuple[str, str] | None = None
        self._login_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def _send(self, method: str, path: str, token: str | None, *, timeout: Any = None, **kw: Any) -> httpx.Response:
        headers = {
            protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION),  # the platform refuses another (426)
            **kw.pop("headers", {}),
            **({"Authorization": f"Bearer {token}"} if token else {}),
        }
        extensions = self.trust.request_extensions()
        try:
            resp = self._http.request(
                method,
                path,
                headers=headers,
                timeout=timeout if timeout is not None else self._timeout,
                extensions=extensions,
                **kw,
            )
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            failure = tls.verification_failure(exc)
            if failure is not None:
                raise tls.untrusted(self.base_url, self.trust, failure) from None
            raise errors.PlatformUnreachable(f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}") from None
        logger.debug("%s %s -> %d", method, path, resp.status_code)
        return resp

    def request(self, method: str, path: str, *, auth: bool = True, timeout: Any = None, **kw: Any) -> Any:
        """Send one call; returns the decoded JSON body (None when empty). 401 → one re-login + retry."""
        token = self._token if auth else None
        resp = self._send(method, path, token, timeout=timeout, **kw)
        if resp.status_code == 401 and auth and self._credentials is not None:
            with self._login_lock:
                if self._token == token:  # another thread may have renewed it meanwhile
                    self.login(*self._credentials)
            resp = self._send(method, path, self._token, timeout=timeout, **kw)
        if not resp.is_success:
            raise errors.ApiError(resp.status_code, _detail(resp), retry_after_s=_retry_after(resp))
        if not resp.content:
            return None
        if resp.headers.get("content-type", "").startswith("text/plain"):
            return resp.text  # a log file
        try:
            return resp.json()
        except ValueError:
            raise errors.ApiError(resp.status_code, f"expected JSON, got {resp.text[:200]!r}") from None

    # --- accounts ------------------------------------------------------------------------

    def healthz(self) -> bool:
        try:
            body = self.request("GET", "/healthz", auth=False)
        except errors.ClientError:
            return False
        return isinstance(body, dict) and body.get("status") == "ok"

    def probe(self) -> Probe:
        """One GET /healthz, whatever its status: what `dcluster-agent doctor` judges (reachability, the
        platform's protocol version, its clock). Raises PlatformUnreachable when nothing answers."""
        started = time.monotonic()
        resp = self._send("GET", "/healthz", None)
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text[:500]
        try:
            server_date = email.utils.parsedate_to_datetime(resp.headers["date"])
        except (KeyError, TypeError, ValueError):
            server_date = None
        return Probe(resp.status_code, body, server_date, time.monotonic() - started)

    def login(self, username: str, password: str) -> str:
        """Get a JWT with the OAuth2 password form; keeps credentials to renew it on a later 401."""
        body = self.request("POST", "/v1/token", auth=False, data={"username": username, "password": password})
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise errors.ApiError(200, "the token answer has no access_token")
        self._token = token
        self._credentials = (username, password)
        return self._token

    def set_token(self, token: str | None) -> None:
        """Use this token from now on; credentials of an earlier login are forgotten (no re-login on 401)."""
        self._token = token
        self._credentials = None

    def create_account(self, username: str, password: str, role: str = domain.Role.BUYER.value) -> JsonObject:
        return _object(
            self.request(
                "POST",
                "/v1/accounts",
                auth=False,
                json={"username": username, "password": password, "role": str(getattr(role, "value", role))},
            )
        )

    def me(self) -> JsonObject:
        return _object(self.request("GET", "/v1/accounts/me"))

    # --- machines ------------------------------------------------------------------------

    def register_machine(
        self,
        machine_key: str,
        name: str,
        spec: domain.MachineSpec,
        price_per_gpu_hour: float = 0.0,
        price_per_cpu_hour: float = 0.0,
    ) -> JsonObject:
        body = api.MachineRegister(
            machine_key=machine_key,
            name=name,
            spec=spec,
            price_per_gpu_hour=price_per_gpu_hour,
            price_per_cpu_hour=price_per_cpu_hour,
        )
        return _object(self.request("POST", "/v1/machines", json=body.model_dump(mode="json")))

    def heartbeat(self, machine_id: str, usage: domain.MachineUsage, leases: Sequence[str] = ()) -> JsonObject:
        body = api.Heartbeat(usage=usage, leases=list(leases))
        return _object(
            self.request("POST", f"{_machine_path(machine_id)}/heartbeat", json=body.model_dump(mode="json"))
        )

    def poll_work(self, machine_id: str, wait_s: float = protocol.LONG_POLL_S) -> list[JsonObject]:
        """Long poll: the platform holds the call up to wait_s; the read timeout leaves it room."""
        timeout = httpx.Timeout(
            self._timeout.connect, read=wait_s + 10, write=self._timeout.write, pool=self._timeout.pool
        )
        body = self.request("GET", f"{_machine_path(machine_id)}/work", params={"wait_s": wait_s}, timeout=timeout)
        return _items(body)

    def leave(self, machine_id: str, *, timeout_s: float | None = None) -> JsonObject:
        body = self.request("DELETE", _machine_path(machine_id), timeout=timeout_s)
        return body if isinstance(body, dict) else {}

    def post_result(self, machine_id: str, item_id: str, result: JsonObject) -> JsonObject:
        """Answer a work item with its protocol.WorkResult (404: the platform no longer waits for it)."""
        path = f"{_machine_path(machine_id)}/results/{quote(str(item_id), safe='')}"
        body = self.request("POST", path, json=result)
        return body if isinstance(body, dict) else {}

    def list_machines(self) -> list[JsonObject]:
        return _items(self.request("GET", "/v1/machines"))

    def get_machine(self, machine_id: str) -> JsonObject:
        return _object(self.request("GET", _machine_path(machine_id)))

    def offers(self) -> list[JsonObject]:
        return _items(self.request("GET", "/v1/offers"))

    # --- clusters (a buyer's) ------------------------------------------------------------

    def create_cluster(self, num_workers: int, duration_s: int, **options: Any) -> JsonObject:
        """Ask for a cluster; options are the other fields of the request (gpus_per_worker, cpus_per_worker,
        gpu_model, name, backend, max_price_per_gpu_hour, ...). Answers at once, while it is pending."""
        body = {"num_workers": num_workers, "duration_s": duration_s, **options}
        return _object(self.request("POST", "/v1/clusters", json=body))

    def list_clusters(self) -> list[JsonObject]:
        return _items(self.request("GET", "/v1/clusters"))

    def get_cluster(self, cluster_id: str) -> JsonObject:
        return _object(self.request("GET", _cluster_path(cluster_id)))

    def cluster_events(self, cluster_id: str, after: int = 0) -> list[JsonObject]:
        """The cluster's events with an id above `after`, oldest first."""
        return _items(self.request("GET", _cluster_path(cluster_id, "/events"), params={"after": after}))

    def cluster_connection(self, cluster_id: str) -> JsonObject:
        """What `ray job submit` and the Ray client need: addresses, the cluster's Ray token, `env`."""
        return _object(self.request("GET", _cluster_path(cluster_id, "/connection")))

    def extend_cluster(self, cluster_id: str, duration_s: int) -> JsonObject:
        return _object(self.request("POST", _cluster_path(cluster_id, "/extend"), json={"duration_s": duration_s}))

    def delete_cluster(self, cluster_id: str) -> JsonObject:
        """Ask for the teardown (idempotent); answers at once, while the nodes are being released."""
        return _object(self.request("DELETE", _cluster_path(cluster_id)))

    def cluster_logs(self, cluster_id: str) -> list[JsonObject]:
        """The index of the log files the cluster's nodes shipped as they were released."""
        return _items(self.request("GET", _cluster_path(cluster_id, "/logs")))

    def cluster_job_log(self, cluster_id: str, job_id: str) -> str:
        """One submitted job's driver output."""
        return _text(self.request("GET", _cluster_path(cluster_id, "/logs/jobs/" + quote(str(job_id), safe=""))))

    def cluster_log_file(self, cluster_id: str, name: str, node: str | None = None) -> str:
        """One file of cluster_logs() (of one node, when several shipped the same name)."""
        params = {"name": name, **({"node": node} if node else {})}
        return _text(self.request("GET", _cluster_path(cluster_id, "/logs/file"), params=params))
