import pytest

from tests.conformance.envs import lightning_python


@pytest.fixture(scope="session")
def reference_python():
    """style -> the reference Lightning interpreter, each environment built once per run."""
    cache = {}

    def get(style):
        if style not in cache:
            cache[style] = lightning_python(style)
        return cache[style]
    return get


# the corpus scripts and the shim are programs the harness runs, not test modules
collect_ignore_glob = ["scripts/*", "shim/*", "runtime/*"]
