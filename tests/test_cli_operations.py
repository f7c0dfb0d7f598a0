"""The operator's CLI against a running hub: deliveries, dead letters, replay."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from hub.pipeline import process_inbound
from hub.streams import inbound_subject
from tests.conftest import fit_note
from tests.natsutil import wait_until
from tests.test_fit_note_flow import record_consent, settled

BIN = Path(sys.executable).parent / "hub"


async def cli(settings, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI without blocking the event loop the in-process hub runs on."""
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir), "HUB_NATS_PORT": str(settings.nats_port)}
    if settings.database_url:
        env["HUB_DATABASE_URL"] = settings.database_url
    proc = await asyncio.create_subprocess_exec(str(BIN), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_dead_letters_listed_shown_and_resubmitted_with_a_fix(hub, settings, tmp_path):
    bad = fit_note(**{"fit_note.issuer.profession": "dentist"})
    out = await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(bad))
    listed = await cli(settings, "dead-letters", "list")
    assert listed.returncode == 0 and out.dead_letter_id in listed.stdout
    assert "/fit_note/issuer/profession" in listed.stdout and "dentist" not in listed.stdout
    shown = await cli(settings, "dead-letters", "show", out.dead_letter_id)
    assert "subject: hub.inbound.fit-note.B86001" in shown.stdout and '"dentist"' in shown.stdout
    fixed = tmp_path / "fixed.json"
    bad["fit_note"]["issuer"]["profession"] = "gp"
    fixed.write_bytes(orjson.dumps(bad))
    done = await cli(settings, "dead-letters", "resubmit", out.dead_letter_id, "--fixed", str(fixed))
    assert done.returncode == 0, done.stderr
    await settled(hub, 1)
    assert (await cli(settings, "dead-letters", "list")).stdout.count(out.dead_letter_id) == 0
    assert out.dead_letter_id in (await cli(settings, "dead-letters", "list", "--status", "resubmitted")).stdout
    assert (await cli(settings, "dead-letters", "show", "nope")).returncode == 2


async def test_deliveries_listed_and_replayed(hub, settings, creds):
    await record_consent(hub, creds)
    await process_inbound(hub.deps, inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()))
    hub.relay.kick()
    await settled(hub, 1)
    listed = await cli(settings, "deliveries", "list", "--person", "9434765919")
    assert listed.returncode == 0
    lines = [line for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert len(lines) == 2 and all(" delivered " in line for line in lines)
    since = (hub.clock.now().replace(hour=0)).isoformat()
    replayed = await cli(settings, "replay", "--recipient", "EMP-ACME", "--since", since)
    assert replayed.returncode == 0 and replayed.stdout.strip() == "replaying 1 deliveries"

    async def sent_again() -> bool:
        async with hub.deps.uow() as uow:
            rows = await uow.audit.search(action="delivery.delivered")
            return sum(len(r.detail["to"]) for r in rows) == 3  # two first time, one replayed
    hub.relay.kick()
    await wait_until(sent_again, 10, "the replayed delivery sent")
    assert (await cli(settings, "replay", "--since", since)).returncode == 2
