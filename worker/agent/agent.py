"""The provider agent: registers this machine, heartbeats, long-polls for work; on stop either leaves (closing
every lease) or, for a restart, just exits and leaves its leases running for the next run (worker/agent/stopping.py)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import dcluster
from dcl_core import domain, protocol
from worker.agent import detect, fake_nvml, lease_work, leases, node_address, outage
from worker.agent import sandbox as sandbox_mod
from worker.agent.state import AgentSettings, MachineState, machine_name

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 5.0
LEASES_DIR = "leases"


class KeyRevoked(Exception):
    """The platform refused this machine's agent key: the provider revoked it (or enrolled the machine anew)."""


class Agent:
    """Keeps this machine registered and heartbeating; hands platform work items to handlers."""

    def __init__(
        self,
        client: dcluster.PlatformApi,
        settings: AgentSettings,
        *,
        detect_fn: Callable[[], domain.MachineSpec] | None = None,
        usage_fn: Callable[[int], domain.MachineUsage] | None = None,
        sleep: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        lease_runner: leases.LeaseRunner | None = None,
    ):
        self.client = client
        self.settings = settings
        self._detect = detect_fn or (
            lambda: detect.detect_machine(
                settings.declared_gpus,
                settings.declared_gpu_model,
                settings.declared_gpu_memory_mb,
                declared_cpus=settings.declared_cpus,
                nvml=fake_nvml.FakeNvml.from_json(settings.test_fake_nvml) if settings.test_fake_nvml else None,
            )
        )
        self._usage = usage_fn or self._default_usage
        self._sleep = sleep  # None: wait on the stop event, so stop() interrupts every wait
        self._clock = clock
        self._rand = rand
        self._state = MachineState(settings.state_dir)
        self.machine_key = self._state.machine_key
        self.machine_id: str | None = None  # set once registered in this run
        self.spec: domain.MachineSpec | None = None
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_S
        # Work item kind -> handler(item), called on the poll thread: a handler must not block.
        self.work_handlers: dict[str, Callable[[dict], Any]] = {}
        if lease_runner is None:
            runtime = sandbox_mod.make_runtime(
                settings.runtime, gpu_dev_root=settings.gpu_device_dir, docker_image=settings.docker_image
            )
            lease_runner = leases.LeaseRunner(
                self._state.dir / LEASES_DIR,
                machine_id_fn=lambda: self.machine_id,
                node_ip=node_address.choose(settings.node_ip, settings.platform_url),
                runtime=runtime,
                limits_fn=lambda payload: settings.lease_limits(payload.cpus, self.spec),
                check_env=({protocol.ENV_TEST_FAKE_NVML: settings.test_fake_nvml} if settings.test_fake_nvml else None),
            )
        self.leases = lease_runner
        self._results = lease_work.ResultPoster(
            client, machine_id=lambda: self.machine_id, wait=lambda s: self.wait(s, self._stopping), rand=rand
        )
        self._lease_work = lease_work.LeaseWork(lease_runner, post_result=self.post_result)
        for kind in (protocol.LEASE_OPEN, protocol.LEASE_EXEC, protocol.LEASE_CLOSE):
            self.work_handlers[kind] = self._lease_work.enqueue
        # The password enrolls the machine once; the agent then speaks with the machine's key alone.
        self._password = settings.password
        self.revoked = False  # set when the platform refused the key: run() returns, the CLI says why
        self.protocol_refused: str | None = None  # the platform's 426: it speaks another protocol version
        self.left = False  # stop() closed the leases and told the platform the machine leaves
        if self._state.agent_key:
            self.client.set_token(self._state.agent_key)
        self._hb_backoff = dcluster.Backoff(rand=rand)
        self._poll_backoff = dcluster.Backoff(rand=rand)
        self._outage = outage.OutageLog(clock)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_started = False
        self._in_long_poll = threading.Event()  # set while the poll thread only waits on the network
        self._poll_wakeup = threading.Event()  # ends the poll thread's backoff once the platform is back
        self._threads: dict[str, threading.Thread] = {}

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat and work-poll threads (daemons: an in-flight long poll never blocks exit)."""
        if self._threads:
            return
        try:
            self.leases.recover()  # before the first heartbeat, which reports the leases that run on (each logged)
        except Exception:
            logger.exception("recovering the leases of a previous run failed")
        logger.info(
            "agent for %s as %s (machine_key %s, state %s)",
            self.settings.platform_url,
            self.settings.username,
            self.machine_key,
            self._state.path,
        )
        for name, step, wakeup in (
            ("heartbeat", self.heartbeat_step, self._stopping),
            ("poll", self.poll_step, self._poll_wakeup),
        ):
            thread = threading.Thread(
                target=self._loop, args=(step, wakeup), name=f"dcluster-agent-{name}", daemon=True
            )
            thread.start()
            self._threads[name] = thread

    def run(self) -> None:
        """start(), then block until stop() (e.g. from a signal handler) has finished."""
        self.start()
        while not self._stopping.wait(0.5):  # short waits keep the main thread free for signal handlers
            pass
        self.stop()
        self._stopped.wait(self.settings.stop_join_s + self.settings.leave_timeout_s + 1)

    @property
    def poll_wakeup(self) -> threading.Event:
        """Set when the poll thread should end its backoff now (the platform answered a heartbeat again)."""
        return self._poll_wakeup

    @property
    def stopping(self) -> threading.Event:
        """Set once stop() began."""
        return self._stopping

    @property
    def holds_password(self) -> bool:
        """Whether the provider's password is still in memory: only until the machine is enrolled."""
        return self._password is not None

    def poll_backoff_attempts(self) -> int:
        return self._poll_backoff.attempts

    def lease_queues(self) -> dict[str, int]:
        """Work items waiting per lease thread (a lease's thread ends, and leaves this, when it is idle)."""
        return self._lease_work.queues()

    def stop(self, *, leave: bool = True) -> None:
        """Stop the loops; leaving, also close every lease and tell the platform the machine leaves (best effort).
        leave=False, a restart: the leases run on, and the next run reattaches them (worker/agent/stopping.py)."""
        if self._stop_started:  # a second signal, or run() after the handler already stopped us
            return
        self._stop_started = True
        self.left = leave
        self._stopping.set()
        self._poll_wakeup.set()
        deadline = time.monotonic() + self.settings.stop_join_s
        for name, thread in self._threads.items():
            if thread is threading.current_thread():
                continue
            if name == "poll" and self._in_long_poll.is_set():
                continue  # nothing to finish there, and the daemon thread never blocks exit
            thread.join(max(0.0, deadline - time.monotonic()))
        if not leave:
            logger.info("stopping for a restart; leases that keep running: %s", ", ".join(self.leases.lease_ids()))
            self._stopped.set()
            return
        try:
            self._stop_leases()
        except Exception:
            logger.exception("stopping leases failed")
        machine_id = self.machine_id
        if machine_id is not None:
            try:
                self.client.leave(machine_id, timeout_s=self.settings.leave_timeout_s)
                logger.info("machine %s left the platform", machine_id)
            except dcluster.ClientError as exc:
                logger.warning(
                    "could not tell the platform that machine %s left (%s); it will be marked "
                    "offline after missed heartbeats",
                    machine_id,
                    exc,
                )
            except Exception:
                logger.exception("leave failed")
        self._stopped.set()

    def _stop_leases(self) -> None:
        """Stop every node this agent runs for buyers (and refuse new ones)."""
        results = self.leases.close_all()
        if results:
            failed = [lease_id for lease_id, result in results.items() if not result.ok]
            logger.info("closed %d lease(s)%s", len(results), f"; failed: {', '.join(failed)}" if failed else "")

    def active_leases(self) -> int:
        return len(self.leases.lease_ids())

    # --- loops ---------------------------------------------------------------------------

    def wait(self, seconds: float, wakeup: threading.Event) -> bool:
        """Wait, or return early when wakeup is set (stop() sets them all); True when stopping."""
        if self._sleep is not None:
            self._sleep(seconds)
        elif wakeup.wait(seconds) and wakeup is not self._stopping:
            wakeup.clear()
        return self._stopping.is_set()

    def _loop(self, step: Callable[[], float], wakeup: threading.Event) -> None:
        while not self._stopping.is_set():
            try:
                delay = step()
            except Exception:
                logger.exception("agent loop step failed")
                delay = 1.0
            if self.wait(delay, wakeup):
                return

    def heartbeat_step(self) -> float:
        """Enroll or register when needed, then heartbeat; returns seconds until the next step."""
        stage = "register"
        try:
            if self.machine_id is None:
                if not self._state.agent_key:
                    stage = "login"
                    self._sign_in_to_enroll()
                    stage = "register"
                self._register()
            stage = "heartbeat"
            held = self.leases.lease_ids()
            ack = self.client.heartbeat(self.machine_id, self._usage(len(held)), held)
            self._set_interval(ack)
            self._lease_work.close_stale(ack.get("stale_leases") or [])
        except dcluster.ApiError as exc:
            if exc.is_transient:
                self._outage.failed(stage, exc)
                return max(self._hb_backoff.next(), min(exc.retry_after_s or 0.0, 300.0))  # 429 says when
            if self._outage.was_unreachable:  # it answers again: start re-registering without the outage's delay
                self._outage.was_unreachable = False
                self._hb_backoff.reset()
            if exc.status_code == 426:  # another protocol version: nothing this agent sends would be understood
                logger.error("the platform refused this agent: %s", exc.detail)
                self.protocol_refused = str(exc.detail)
                self._stopping.set()  # run() stops the leases and returns; the CLI exits with the message
                return 0.0
            if exc.status_code == 401 and self._state.agent_key:
                self._key_refused(exc)
                return 0.0
            if stage == "heartbeat" and exc.status_code == 404:
                logger.warning("the platform no longer knows machine %s; registering again", self.machine_id)
                self.machine_id = None
            else:
                self._outage.failed(stage, exc)
            return self._hb_backoff.next()
        except (dcluster.PlatformUnreachable, dcluster.UntrustedPlatform) as exc:  # no answer it may believe
            self._outage.failed(stage, exc)
            return self._hb_backoff.next()
        except KeyRevoked as exc:
            logger.error("%s", exc)
            self.revoked = True
            self._stopping.set()  # run() stops the leases and returns
            return 0.0
        except Exception:
            logger.exception("unexpected error at %s", stage)
            return self._hb_backoff.next()
        if self._outage.recovered():
            self._wake_poll()
        self._hb_backoff.reset()
        return self.heartbeat_interval_s

    def _key_refused(self, exc: dcluster.ApiError) -> None:
        """The key is dead for good: forget it, stop offering the machine (a provider who revoked it
        does not want it back on its own), and say how to enroll it again."""
        logger.error(
            "the platform refused this machine's agent key (%s): the provider revoked it or enrolled "
            "the machine again elsewhere. Its leases are closed and the agent stops; start it again "
            "with the provider's password to enroll the machine anew",
            exc.detail,
        )
        self._state.agent_key = None
        self._save_state()
        self.client.set_token(None)
        self.revoked = True
        self._stopping.set()

    def _register(self) -> None:
        # Detected again on each registration: drivers and GPUs change over days.
        runtime = self.leases.runtime
        update: dict[str, str] = {"sandbox": runtime.name}
        versions = runtime.lease_versions()  # leases in a docker image run its Ray and Python, not the agent's
        if versions is not None:
            update.update(ray_version=versions[0], python_version=versions[1])
        self.spec = self._detect().model_copy(update=update)
        name = self.settings.name or machine_name(self.spec.hostname)
        answer = self.client.register_machine(
            self.machine_key, name, self.spec, self.settings.price_per_gpu_hour, self.settings.price_per_cpu_hour
        )
        self.machine_id = str(answer["id"])
        if answer.get("agent_key"):
            # Enrolled: from now on the machine's own key; the password is forgotten.
            self._state.agent_key = answer["agent_key"]
            self.client.set_token(self._state.agent_key)
            self._password = None
            logger.info(
                "machine %s enrolled: the agent now uses its own key (in %s)", self.machine_id, self._state.path
            )
        self._set_interval(answer)
        self._wake_poll()
        logger.info(
            "registered machine %s as %r: %d CPUs, %d MiB RAM, %d GPU(s)%s",
            self.machine_id,
            name,
            self.spec.cpus,
            self.spec.memory_mb,
            len(self.spec.gpus),
            f" {self.spec.gpu_model}" if self.spec.gpus else "",
        )
        if self._state.machine_id != self.machine_id or answer.get("agent_key"):
            self._state.machine_id = self.machine_id
            self._save_state()

    def _sign_in_to_enroll(self) -> None:
        if self._password is None:
            raise KeyRevoked(
                "this machine has no agent key and the agent has no password to enroll it: start "
                "the agent with the provider's password (--password-file or $DCLUSTER_AGENT_PASSWORD)"
            )
        self.client.login(self.settings.username, self._password.get_secret_value())
        logger.info("signed in as %s to enroll this machine", self.settings.username)

    def _save_state(self) -> None:
        try:
            self._state.save()
        except OSError as exc:
            logger.warning("could not save %s: %s", self._state.path, exc)

    def _set_interval(self, answer: Any) -> None:
        try:
            self.heartbeat_interval_s = min(300.0, max(0.1, float(answer["heartbeat_interval_s"])))
        except (KeyError, TypeError, ValueError):
            pass  # keep the last interval the platform gave

    def _wake_poll(self) -> None:
        """Let the poll thread retry now rather than at the end of its outage backoff."""
        self._poll_backoff.reset()
        self._poll_wakeup.set()

    def poll_step(self) -> float:
        machine_id = self.machine_id
        if machine_id is None:
            return 0.2  # the heartbeat thread is still registering
        started = self._clock()
        self._in_long_poll.set()
        try:
            if self._stopping.is_set():  # checked after the flag, so stop() either sees it or we see stop
                return 0.0
            items = self.client.poll_work(machine_id, wait_s=self.settings.poll_wait_s)
        except dcluster.ClientError as exc:
            # The heartbeat loop reports outages and re-registers; here only back off.
            logger.debug("work poll failed: %s", exc)
            return self._poll_backoff.next()
        except Exception:
            logger.exception("unexpected error polling for work")
            return self._poll_backoff.next()
        finally:
            self._in_long_poll.clear()
        self._poll_backoff.reset()
        for item in items:
            if self._stopping.is_set():
                break
            self.handle_work(item)
        # An empty answer that came back at once means no long poll: don't hammer the platform.
        return 1.0 if not items and self._clock() - started < 1.0 else 0.0

    # --- work ----------------------------------------------------------------------------

    def handle_work(self, item: dict) -> None:
        """Dispatch one work item to its kind's handler; a failing handler never stops polling."""
        kind = item.get("kind") if isinstance(item, dict) else None
        handler = self.work_handlers.get(kind, self._log_work)
        try:
            handler(item)
        except Exception:
            logger.exception("work item %s (%s) failed", item.get("id") if isinstance(item, dict) else item, kind)

    def _log_work(self, item: dict) -> None:
        logger.info("work item %s of kind %r received (no handler yet)", item.get("id"), item.get("kind"))

    def _default_usage(self, active_leases: int) -> domain.MachineUsage:
        real_gpus = bool(self.spec and self.spec.gpus and not self.spec.gpus_declared)
        return detect.current_usage(active_leases, with_gpus=real_gpus)

    def post_result(self, item_id: str, result: protocol.WorkResult) -> bool:
        """Send the result, retrying with backoff while the platform is unreachable; True once accepted."""
        return self._results.post(item_id, result)
