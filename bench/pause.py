"""What an event costs when the hub is not busy: `python -m bench.pause [events a run]
[pause ms] [rounds]` (defaults 1000 5 3).

The inbound transaction alone (`hub.pipeline.process_inbound_batch`, no broker) on a
fresh SQLite database with a consent per person, its write-ahead log checkpointed
on a thread of its own as the hub's is, timed in the thread's own CPU time for
each batch:

- one-event batches back to back;
- one-event batches with a pause between them (the thread asleep, as the hub is
  between events at a low offered load);
- batches of 10 and of 500 back to back (a backlog's).

Then the fit-note adapter alone (`adapters.adapt`, median thread CPU time of a
note): back to back, after the thread slept the pause, and after it spun for the
pause instead (busy, not idle).

The kinds take turns, `rounds` times over, because this kind of machine's speed
drifts within minutes; it prints each run and the median of each kind. The difference
between the first two is what the same work costs once it has not run for a few
milliseconds; the difference between one-event batches and a backlog's is what a
transaction costs on its own.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time

from bench.run import GP, fit_note, inbound_alone, nhs_numbers

KINDS = (("one-event batches, back to back", 1, 0.0), ("one-event batches, paused", 1, None),
         ("batches of 10", 10, 0.0), ("batches of 500", 500, 0.0))


async def main(per_run: int, pause_s: float, rounds: int) -> dict[str, list[float]]:
    url, engine, deps, messages = await inbound_alone("pause", per_run * (rounds * len(KINDS) + 1))
    from hub.cli import collector_for_running
    from hub.db import checkpointer
    from hub.pipeline import process_inbound_batch

    log_copier = checkpointer(url)  # as the hub runs: no commit pays for a checkpoint
    if log_copier is not None:
        log_copier.start()
    for i in range(0, per_run, 100):  # warm-up: imports, statements compiled
        await process_inbound_batch(deps, messages[i:i + 100])
    collector_for_running()
    results: dict[str, list[float]] = {name: [] for name, _, _ in KINDS}
    at = per_run
    for _ in range(rounds):
        for name, batch, pause in KINDS:
            pause = pause_s if pause is None else pause
            cpu = 0.0
            for i in range(at, at + per_run, batch):
                if pause:
                    time.sleep(pause)
                started = time.thread_time()
                await process_inbound_batch(deps, messages[i:min(i + batch, at + per_run)])
                cpu += time.thread_time() - started
            at += per_run
            results[name].append(1000 * cpu / per_run)
            print(f"{name}: {results[name][-1]:.2f} ms of CPU an event", flush=True)
    await engine.dispose()
    if log_copier is not None:
        log_copier.stop()
    return results


def adapter_alone(per_run: int, pause_s: float, rounds: int) -> dict[str, list[float]]:
    """Median microseconds of thread CPU an adapted fit note, run by run."""
    from adapters import adapt
    from hub.clock import Clock
    from hub.directory import load_directory

    directory, now, gen = load_directory(None), Clock().now(), nhs_numbers()
    notes = [fit_note(next(gen), i, "adapter")[1] for i in range(per_run)]

    def spin(seconds: float) -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass

    kinds = (("back to back", None), ("after sleeping", time.sleep), ("after spinning", spin))
    results: dict[str, list[float]] = {name: [] for name, _ in kinds}
    for _ in range(rounds):
        for name, wait in kinds:
            spent = []
            for note in notes:
                if wait:
                    wait(pause_s)
                started = time.thread_time()
                adapt("fit-note", note, subject_org_id=GP, directory=directory, now=now)
                spent.append(time.thread_time() - started)
            results[name].append(1e6 * statistics.median(spent))
    return results


def cli() -> None:
    args = sys.argv[1:]
    if len(args) > 3:
        sys.exit(__doc__)
    per_run, pause_ms, rounds = (int(args[0]) if args else 1000, float(args[1]) if len(args) > 1 else 5.0,
                                 int(args[2]) if len(args) > 2 else 3)
    if per_run < 1 or rounds < 1 or pause_ms < 0:
        sys.exit("events a run and rounds must be at least 1, the pause not negative")
    results = asyncio.run(main(per_run, pause_ms / 1000, rounds))
    print(f"\nmedian of {rounds} runs each, {per_run} events a run, pauses of {pause_ms:g} ms:")
    for name, values in results.items():
        print(f"  {name}: {statistics.median(values):.2f} ms of CPU an event")
    print(f"the fit-note adapter alone, median of a note, {pause_ms:g} ms pauses:")
    for name, values in adapter_alone(per_run, pause_ms / 1000, rounds).items():
        print(f"  {name}: {' / '.join(f'{v:.0f}' for v in values)} us")


if __name__ == "__main__":
    cli()
