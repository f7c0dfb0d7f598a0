"""Profile the hub on a backlog: `python -m bench.profile [events]` runs `hub run`
under py-spy on a pre-filled backlog and writes bench/profile.txt (collapsed
stacks; the top frames are printed)."""
from __future__ import annotations

import asyncio
import os
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import nats

from bench.run import GP, HUB, ROOT, Listener, fit_note, hub_env, nhs_numbers, publish_backlog, seed, start_nats, stop


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hub-profile-") as tmp:
        nats_proc, url = start_nats(Path(tmp) / "nats")
        try:
            gen = nhs_numbers()
            persons = [next(gen) for _ in range(n)]
            await seed(url, Path(tmp) / "hub", persons)
            nc = await nats.connect(url)
            await publish_backlog(nc.jetstream(), f"hub.inbound.fit-note.{GP}",
                                  [fit_note(p, i, "prof") for i, p in enumerate(persons)])
            listener = Listener()
            listener.expect(2 * n)
            await nc.subscribe("hub.deliver.>", cb=listener.on_msg)
            out = ROOT / "bench" / "profile.txt"
            proc = subprocess.Popen([HUB, "run"], env=hub_env(url, Path(tmp) / "hub"), stdout=subprocess.DEVNULL)
            spy = subprocess.Popen([str(Path(HUB).parent / "py-spy"), "record", "--nonblocking", "-r", os.environ.get("PROFILE_RATE", "100"), "-f", "raw", "-o",
                                    str(out), "--pid", str(proc.pid)], stdout=subprocess.DEVNULL)
            try:
                await asyncio.wait_for(listener.done.wait(), timeout=600)
            finally:
                spy.send_signal(subprocess.signal.SIGINT)
                spy.wait(30)
                stop(proc)
            await nc.close()
        finally:
            stop(nats_proc)
    own: collections.Counter = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")):
            own[frame] += int(count)
    for frame, c in own.most_common(60):
        print(f"{100 * c / total:5.1f}%  {frame}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
