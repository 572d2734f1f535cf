"""actors.backends.catalog: one backend for each ClusterSpec.backend name, each behind the one interface."""

from __future__ import annotations

import typing

from actors.backends import backend, catalog
from actors.settings import PlatformSettings
from dcl_core import cluster_spec
from tests.protocols import assert_implements


def test_every_spec_backend_has_one_backend_behind_the_interface(tmp_path):
    made = catalog.backends(PlatformSettings(state_dir=tmp_path, api_url="http://127.0.0.1:9"), tokens=lambda: None)
    assert set(made) == set(typing.get_args(cluster_spec.Backend))
    assert all(b.name == name for name, b in made.items())
    assert_implements(backend.Backend, *map(type, made.values()))


def test_launch_steps_implement_the_interface():
    assert_implements(backend.LaunchSteps, *map(type, catalog.LAUNCH_STEPS))
