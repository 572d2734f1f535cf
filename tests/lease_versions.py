"""What a lease runs on the suite's machines: this install's Ray and Python, as a real agent reports them
(worker.agent.detect), so that placement matches them with the platform's clusters."""

import importlib.metadata
import platform

RAY = importlib.metadata.version("ray")
PYTHON = platform.python_version()
SPEC_FIELDS = {"ray_version": RAY, "python_version": PYTHON}
