"""`hub run`, `hub credential issue/revoke` and `hub demo` as real processes,
as a newcomer runs them after `make run`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import pytest

from hub.nats_auth import inbox_prefix
from tests.natsutil import free_port

BIN = Path(sys.executable).parent


@pytest.fixture
def hub_process(tmp_path):
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "var"), "HUB_NATS_PORT": str(free_port()),
           "HUB_HTTP_PORT": str(free_port()), "HUB_LOG_LEVEL": "WARNING"}
    env.pop("HUB_NATS_URL", None)
    env.pop("HUB_DATABASE_URL", None)
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([str(BIN / "hub"), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{env['HUB_HTTP_PORT']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("hub run did not become healthy:\n" + (tmp_path / "hub.log").read_text())
        time.sleep(0.2)
    yield proc, env, base
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    log.close()


def hub_cli(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hub"), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=check)


async def _connect(env, cred, org):
    return await nats.connect(f"nats://127.0.0.1:{env['HUB_NATS_PORT']}", user=cred["nats_user"],
                              password=cred["nats_password"], inbox_prefix=inbox_prefix(org),
                              allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)


async def _can_connect(env, cred, org, tries: int = 20) -> bool:
    for _ in range(tries):  # the server applies a reload asynchronously
        try:
            nc = await _connect(env, cred, org)
        except Exception:  # noqa: BLE001
            time.sleep(0.1)
            continue
        await nc.close()
        return True
    return False


async def test_credential_issue_and_revoke_against_a_running_hub(hub_process):
    proc, env, base = hub_process
    out = hub_cli(env, "credential", "issue", "--role", "recipient", "--org", "EMP-ACME", "--json")
    cred = json.loads(out.stdout)
    assert set(cred) == {"http_token", "nats_user", "nats_password"}
    assert await _can_connect(env, cred, "EMP-ACME")
    ig = json.loads(hub_cli(env, "credential", "issue", "--role", "ig-auditor", "--json").stdout)
    assert httpx.get(f"{base}/api/v1/dead-letters", headers={"Authorization": f"Bearer {ig['http_token']}"}
                     ).status_code == 200

    assert hub_cli(env, "credential", "revoke", cred["nats_user"]).returncode == 0
    gone = False
    for _ in range(30):
        try:
            nc = await _connect(env, cred, "EMP-ACME")
            await nc.close()
            time.sleep(0.1)
        except Exception:  # noqa: BLE001 - authorization violation once reloaded
            gone = True
            break
    assert gone, "a revoked NATS user could still connect"
    bad = hub_cli(env, "credential", "issue", "--role", "publisher", "--json", check=False)
    assert bad.returncode == 2 and "needs --org" in bad.stderr
    bad = hub_cli(env, "credential", "issue", "--role", "recipient", "--org", "NOPE", "--json", check=False)
    assert bad.returncode == 2 and "not in the directory" in bad.stderr


def test_demo_runs_against_a_running_hub_and_the_hub_stops_cleanly(hub_process, tmp_path):
    proc, env, base = hub_process
    demo = hub_cli(env, "demo", check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "received fitness-advice, identity" in out  # the employer's cut-down copy
    assert "received contact, diagnosis, fitness-advice, identity" in out  # the OH provider's
    assert "Denied: the issuing clinician did not allow the diagnosis to be shared with the employer" in out
    assert "OH referral from Acme                OHP-HEALTHWORKS  received contact, identity, referral" in out
    assert "Access to Work request               ATW-GB           received atw-application, contact, identity" in out
    assert "B86001           received adjustments, clinical-notes, fitness-advice, identity" in out
    assert "clinical-notes: Denied: clinical notes never reach an employer" in out
    assert "absence milestone (the hub, day 28)  OHP-HEALTHWORKS  received contact, identity, referral" in out
    assert "withdrawn on" in out
    assert "6. disclosure report for" in out
    assert "Acme Logistics Ltd (EMP-ACME)" in out and "oh-outcome-reported" in out
    assert "demo finished: deliveries before the withdrawal, none after." in out

    pid_file = Path(env["HUB_DATA_DIR"]) / "nats" / "nats.pid"
    nats_pid = int(pid_file.read_text().strip())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    time.sleep(0.2)
    assert not Path(f"/proc/{nats_pid}").exists() or "zombie" in Path(f"/proc/{nats_pid}/status").read_text().lower()
