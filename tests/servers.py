"""Real servers for tests: testcontainers when a Docker engine answers,
otherwise the real binaries started here (no Docker runs on our machines or CI)."""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator

from hub.nats_server import find_nats_server
from tests.natsutil import free_port, port_listening


def docker_available() -> bool:
    try:
        import docker  # installed with testcontainers

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no"
        return False


@contextlib.contextmanager
def external_nats() -> Iterator[str]:
    """A JetStream nats-server the hub did not start; yields its URL."""
    if docker_available():
        from testcontainers.core.container import DockerContainer

        with DockerContainer("nats:2.12-alpine").with_command("-js").with_exposed_ports(4222) as c:
            yield f"nats://{c.get_container_host_ip()}:{c.get_exposed_port(4222)}"
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        proc = subprocess.Popen([find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not port_listening(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start")
                time.sleep(0.05)
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


__all__ = ["docker_available", "external_nats"]
