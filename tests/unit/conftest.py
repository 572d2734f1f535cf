"""Unit tests never start Ray: ray.init raises here, as in Ray Serve's own unit conftest."""

import pytest
import ray


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; put this test under tests/integration")
    monkeypatch.setattr(ray, "init", refuse)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()
