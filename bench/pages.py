"""Pages each batch of fit notes writes, by B-tree: `python -m bench.pages [events
already stored] [batch] [batches]` (defaults 10000 200 5).

The inbound transaction alone (`hub.pipeline.process_inbound_batch`, no broker)
on a fresh SQLite database (the URL must be SQLite's) with a consent per person (random NHS numbers, as in
`make bench`): it stores the given number of events first, then commits the
measured batches one by one, and after each reads the write-ahead log's frame
headers (each frame one page written) and names each page's table or index from
SQLite's `dbstat`. The log is emptied (checkpointed) before each measured batch.
"""
from __future__ import annotations

import asyncio
import collections
import sqlite3
import struct
import sys
from pathlib import Path

from bench.run import inbound_alone

_WAL_HEADER, _FRAME_HEADER = 32, 24


def _pages(wal: Path, page_size: int) -> list[int]:
    raw = wal.read_bytes()
    return [struct.unpack(">I", raw[at:at + 4])[0] for at in range(_WAL_HEADER, len(raw), _FRAME_HEADER + page_size)]


async def main(stored: int, batch: int, batches: int) -> None:
    url, engine, deps, messages = await inbound_alone("pages", stored + batch * batches)  # no checkpoint but ours
    from hub.pipeline import process_inbound_batch

    db = Path(url.split(":///", 1)[1])
    wal = db.with_name(db.name + "-wal")
    for i in range(0, stored, 200):
        await process_inbound_batch(deps, messages[i:min(i + 200, stored)])
    check = sqlite3.connect(db, isolation_level=None)
    page_size = check.execute("PRAGMA page_size").fetchone()[0]
    by_tree: collections.Counter = collections.Counter()
    for start in range(stored, stored + batch * batches, batch):
        check.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await process_inbound_batch(deps, messages[start:start + batch])
        owner = dict(check.execute("SELECT pageno, name FROM dbstat").fetchall())
        by_tree.update(owner.get(p, "?") for p in _pages(wal, page_size))
    events = batch * batches
    print(f"{sum(by_tree.values()) / events:.1f} pages written per event (batches of {batch}, "
          f"{stored} events stored before)")
    for name, n in by_tree.most_common():
        print(f"  {n / events:5.2f}  {name}")
    await engine.dispose()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [10000, 200, 5][len(args):])))
