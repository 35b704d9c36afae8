"""Shared test set-up. Process fixtures (redis-server, the simulated cluster, the proxy) live in
tests/processes.py and are exposed here as factories that close everything they started."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The machine is shared and noisy: never fail a property on wall-clock time.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
