"""Every test's fixtures come from one module, tests/fixtures.py."""
from __future__ import annotations

pytest_plugins = ("tests.fixtures",)


def pytest_configure(config):
    config.addinivalue_line("markers", "tracker_args(*flags): extra flags for the `tracker` process fixture")
    config.addinivalue_line("markers", "tracker_config(**fields): tracker Config fields for `local_tracker`")
