"""Real servers for tests: testcontainers when a Docker engine answers,
otherwise the real binaries started here (no Docker runs on our machines or CI)."""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator

from deploy.cluster import pg_bin as _pg_bin  # one lookup of Debian's PostgreSQL binaries
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




@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields an admin DSN (postgresql://...).
    testcontainers when a Docker engine answers, else initdb/pg_ctl into a temp
    dir on a free loopback port (as the `postgres` user when run as root, since
    initdb refuses root)."""
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", username="hub", password="hub", dbname="hub") as pg:
            yield f"postgresql://hub:hub@{pg.get_container_host_ip()}:{pg.get_exposed_port(5432)}/hub"
        return
    import os
    import pwd
    import shutil

    port = free_port()
    root = tempfile.mkdtemp(prefix="hub-pg-")
    data = f"{root}/data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_user, _pg_bin("initdb"), "-D", data, "-U", "hub", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", data, "-l", f"{root}/log", "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                        "start"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield f"postgresql://hub@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
