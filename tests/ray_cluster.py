"""A real two-node Ray cluster on 127.0.0.1 for the tests that run on Ray.

It is Ray's own multi-node test harness (``ray.cluster_utils.Cluster``): a head and a second node,
each a real raylet with its own worker processes, both bound to 127.0.0.1. (``ray start --address``
on one machine turns 127.0.0.1 into the machine's network address when it joins a second node, so it
cannot keep a test on the loopback interface.)
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@functools.cache
def ray_home() -> Path:
    """The HOME of every Ray instance this test process starts (Ray keeps its auth token in
    ``~/.ray/auth_token``). One for the whole process: Ray writes the token once and the process
    keeps using it, so a cluster started later under another HOME finds no token file there and its
    GCS stops ("couldn't find an authentication token")."""
    home = Path(tempfile.mkdtemp(prefix="gs-ray-home-", dir="/tmp"))
    atexit.register(shutil.rmtree, home, True)
    return home


@contextmanager
def local_cluster() -> Iterator[Any]:
    """A head and a second node (one CPU each) on 127.0.0.1; HOME is :func:`ray_home` and Ray's
    session files are in a short folder under /tmp; everything stopped on the way out, also when
    the test killed the head."""
    home = ray_home()
    # Ray's session sockets live under its temp dir, and a Unix socket path may not exceed 107 bytes:
    # pytest's folders (pytest-of-root/pytest-152/popen-gw1/...) are too deep for that.
    sessions = Path(tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ["HOME"] = str(home)
    # bind every node to 127.0.0.1; read once, when Ray is first imported (so not before this)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": str(sessions)},
    )
    try:
        cluster.add_node(num_cpus=1)
        assert cluster.address.startswith("127.0.0.1:")
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(sessions, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
