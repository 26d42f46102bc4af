import pytest

from tests.integration.cluster import Cluster
from tests.integration.hostile import LoopThread


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def loop_thread():
    """An event loop in a thread, for the scripted nodes of tests/integration/hostile.py."""
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
