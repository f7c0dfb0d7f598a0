"""The embedded nats-server's lifecycle, on the real binary (hub.nats_server)."""
from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from hub.nats_auth import NatsUser, hash_password
from hub.nats_server import (
    EmbeddedNats,
    NatsServerError,
    find_nats_server,
    signal_reload,
)
from tests.natsutil import connect, free_port, port_listening, wait_until

HUB_USER, HUB_PASSWORD = "hub", "hub-secret-for-tests"


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture
async def server(tmp_path: Path, port: int) -> AsyncIterator[EmbeddedNats]:
    srv = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def pid_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return fields[0] != "Z"


def loopback_listeners(port: int) -> list[str]:
    """Local addresses of LISTEN sockets on ``port`` (Linux /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            addr, hexport = cols[1].split(":")
            if int(hexport, 16) == port and cols[3] == "0A":  # 0A = LISTEN
                found.append(addr)
    return found


def test_finds_the_binary_shipped_with_the_venv() -> None:
    path = find_nats_server()
    assert Path(path).name == "nats-server"
    assert os.access(path, os.X_OK)


async def test_start_runs_jetstream_on_loopback_with_store_under_data_dir(
    server: EmbeddedNats, tmp_path: Path, port: int
) -> None:
    conf = server.conf_path.read_text()
    assert f'listen: "127.0.0.1:{port}"' in conf
    assert f'store_dir: "{(tmp_path / "nats" / "jetstream").resolve()}"' in conf
    assert 'include "auth.conf"' in conf

    nc = await server.connect_as_hub()
    try:
        assert nc._server_info["host"] == "127.0.0.1"
        js = nc.jetstream(timeout=2)
        info = await js.account_info()
        assert info.streams == 0
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.one", b"x")
        assert ack.stream == "PROBE" and ack.seq == 1
    finally:
        await nc.close()

    # The stream's files are under the data dir.
    assert list(server.store_dir.rglob("PROBE")), "JetStream did not store under the data dir"
    # The pid file names the running process.
    assert int(server.pid_path.read_text()) == server.pid
    if sys.platform.startswith("linux"):
        assert loopback_listeners(port) == ["0100007F"]  # 127.0.0.1, nothing else


async def test_auth_conf_is_private_and_anonymous_or_wrong_password_is_refused(
    server: EmbeddedNats,
) -> None:
    assert stat.S_IMODE(server.auth_conf_path.stat().st_mode) == 0o600
    assert HUB_PASSWORD not in server.auth_conf_path.read_text()  # only the bcrypt hash
    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=1, error_cb=_ignore)
    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        await connect(server.url, HUB_USER, "wrong")


async def test_stop_leaves_no_process(tmp_path: Path, port: int) -> None:
    srv = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
    await srv.start()
    pid = srv.pid
    assert pid is not None and pid_running(pid)
    await srv.stop()
    assert srv.pid is None and not srv.running
    assert not pid_running(pid)
    assert not port_listening(port)
    assert not srv.pid_path.exists()
    await srv.stop()  # idempotent


async def test_restart_after_server_was_killed_keeps_jetstream_data(tmp_path: Path, port: int) -> None:
    first = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
    await first.start()
    nc = await first.connect_as_hub()
    await nc.jetstream(timeout=2).add_stream(name="KEEP", subjects=["keep.>"])
    await nc.jetstream(timeout=2).publish("keep.it", b"x")
    await nc.close()
    pid = first.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # a crash: no clean shutdown, the pid file stays
    assert first._proc is not None
    first._proc.wait(5)
    assert first.pid_path.exists()

    second = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
    await second.start()
    try:
        assert second.pid != pid
        nc = await second.connect_as_hub()
        info = await nc.jetstream(timeout=2).stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
    finally:
        await second.stop()


async def test_start_stops_a_stale_live_server_named_by_the_pid_file(tmp_path: Path, port: int) -> None:
    # An earlier hub crashed but its broker survived (no PDEATHSIG, e.g. macOS):
    # the old server still holds the port and the pid file names it.
    orphan = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
    await orphan.start()
    orphan_pid = orphan.pid
    assert orphan_pid is not None
    orphan_proc, orphan._proc = orphan._proc, None  # the hub forgot it

    fresh = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password="a-new-password")
    await fresh.start()
    try:
        assert orphan_proc is not None and orphan_proc.wait(5) is not None
        assert not pid_running(orphan_pid)
        assert fresh.pid is not None and fresh.pid != orphan_pid
        assert int(fresh.pid_path.read_text()) == fresh.pid
        nc = await connect(fresh.url, HUB_USER, "a-new-password")  # the new server answers
        await nc.close()
    finally:
        await fresh.stop()


async def test_a_pid_file_naming_some_other_process_is_left_alone(tmp_path: Path, port: int) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # noqa: ASYNC220
    try:
        (tmp_path / "nats").mkdir()
        (tmp_path / "nats" / "nats.pid").write_text(str(bystander.pid))
        srv = EmbeddedNats(tmp_path, port, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
        await srv.start()
        await srv.stop()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_broker_dies_with_a_killed_hub(tmp_path: Path, port: int) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from hub.nats_server import EmbeddedNats

        async def main():
            srv = EmbeddedNats(Path({str(tmp_path)!r}), {port}, hub_user="hub", hub_password="pw")
            await srv.start()
            print(srv.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    hub = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    try:
        assert hub.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(hub.stdout.readline), 15)
        broker_pid = int(line)
        assert pid_running(broker_pid)
        hub.kill()  # kill -9 of the hub: no cleanup code runs
        hub.wait(5)
        await wait_until(lambda: not pid_running(broker_pid), 5, "the broker to exit")
        await wait_until(lambda: not port_listening(port), 5, "the port to be free")
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        if hub.stdout is not None:
            hub.stdout.close()


async def test_start_fails_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        srv = EmbeddedNats(tmp_path, taken, hub_user=HUB_USER, hub_password=HUB_PASSWORD)
        started = time.monotonic()
        with pytest.raises(NatsServerError, match="(?i)address already in use|did not become ready"):
            await srv.start(timeout=5)
        assert time.monotonic() - started < 5
        assert not srv.running


async def test_signal_reload_from_another_process_applies_new_users(
    server: EmbeddedNats, tmp_path: Path
) -> None:
    user = NatsUser("late-publisher", hash_password("late-pw"), "publisher", "P7")
    with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
        await connect(server.url, "late-publisher", "late-pw")

    # What `hub credential issue` does: it only knows the data dir and the hash.
    assert signal_reload(tmp_path, [user], HUB_USER, server.hub_password_hash) is True

    async def can_connect() -> bool:
        try:
            nc = await connect(server.url, "late-publisher", "late-pw", org="P7")
        except (nats.errors.Error, OSError):  # a connect racing the reload may be reset
            return False
        await nc.close()
        return True

    await wait_until(can_connect, 3, "the reloaded user to be accepted")
    hub = await server.connect_as_hub()  # the stable hub hash still works
    await hub.close()

    await server.stop()
    assert signal_reload(tmp_path, [], HUB_USER, server.hub_password_hash) is False
    assert "late-publisher" not in server.auth_conf_path.read_text()


async def _ignore(_exc: Exception) -> None:
    pass
