"""The `hub` command (Typer). Settings come from HUB_* environment variables."""
from __future__ import annotations

import asyncio
import json
import logging
import gc
import signal
from typing import Optional

import typer

from hub.settings import Settings

app = typer.Typer(help="Health and work integration hub", no_args_is_help=True, add_completion=False)
credential_app = typer.Typer(help="Issue and revoke credentials (HTTP token + NATS user)", no_args_is_help=True)
app.add_typer(credential_app, name="credential")
audit_app = typer.Typer(help="The hash-chained audit trail", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
deliveries_app = typer.Typer(help="Deliveries and their states", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")
dead_letters_app = typer.Typer(help="Dead-lettered input: list, inspect, resubmit", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")


def _offline(work):
    """Run `work(hub_parts)` against the database (and, for resubmits, the broker)
    of the hub these settings describe, without starting a hub."""
    from hub.audit import AuditLog, load_audit_key
    from hub.clock import Clock
    from hub.db import make_engine, migrate
    from hub.directory import load_directory
    from hub.pipeline import Deps
    from hub.store import UnitOfWorkFactory

    settings = Settings()

    async def _go():
        engine = make_engine(settings.db_url)
        try:
            await migrate(engine)
            deps = Deps(uow=UnitOfWorkFactory(engine), directory=load_directory(settings.directory), clock=Clock(),
                        audit=AuditLog(load_audit_key(settings.resolved_data_dir, settings.audit_key)))
            return await work(settings, deps)
        finally:
            await engine.dispose()

    return asyncio.run(_go())


def _print_rows(rows, columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(_cell(getattr(r, c))) for r in rows]) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        typer.echo("  ".join(_cell(getattr(r, c)).ljust(widths[c]) for c in columns))


def _cell(value) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


@deliveries_app.command("list")
def deliveries_list(
    state: Optional[str] = typer.Option(None, help="pending | delivered | retrying | withheld | dead-lettered"),
    recipient: Optional[str] = typer.Option(None, help="recipient org_id"),
    nhs_number: Optional[str] = typer.Option(None, "--person", help="the person's NHS number"),
    limit: int = typer.Option(100),
) -> None:
    """List deliveries with their state (what a recipient got, or why not)."""
    from schemas import identifiers

    nhs = identifiers.nhs_number(nhs_number) if nhs_number else None

    async def work(_settings, deps):
        async with deps.uow() as uow:
            return await uow.deliveries.search(nhs_number=nhs, recipient_id=recipient, state=state, limit=limit)

    _print_rows(_offline(work), ["delivery_id", "state", "channel", "attempts", "categories", "created_at",
                                 "delivered_at", "last_error"])


@deliveries_app.command("retry")
def deliveries_retry(delivery_id: str) -> None:
    """Put a dead-lettered delivery back to pending under its own id (consent is decided again)."""
    from hub.redelivery import RedeliveryRefused, retry_delivery

    async def work(_settings, deps):
        async with deps.uow() as uow:
            await retry_delivery(uow, deps, delivery_id, actor="cli", now=deps.clock.now())
            await uow.commit()

    try:
        _offline(work)
    except (LookupError, RedeliveryRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{delivery_id}: pending; the running hub's relay sends it")


@app.command()
def replay(
    since: str = typer.Option(..., help="RFC 3339 time: deliveries made from then on"),
    recipient: Optional[str] = typer.Option(None, help="recipient org_id"),
    nhs_number: Optional[str] = typer.Option(None, "--person", help="the person's NHS number"),
) -> None:
    """Re-deliver what was delivered to a recipient and/or about a person since a
    time, under the original delivery ids; consent is decided again."""
    from datetime import datetime

    from hub.redelivery import RedeliveryRefused, replay as do_replay
    from schemas import identifiers

    when = datetime.fromisoformat(since)
    if when.tzinfo is None:
        typer.echo("error: --since needs a time zone (e.g. 2026-11-21T09:00:00Z)", err=True)
        raise typer.Exit(2)
    nhs = identifiers.nhs_number(nhs_number) if nhs_number else None

    async def work(_settings, deps):
        async with deps.uow() as uow:
            ids = await do_replay(uow, deps, nhs_number=nhs, recipient_id=recipient, since=when, actor="cli",
                                  now=deps.clock.now())
            await uow.commit()
            return ids

    try:
        ids = _offline(work)
    except RedeliveryRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"replaying {len(ids)} deliveries")


@dead_letters_app.command("list")
def dead_letters_list(status: Optional[str] = typer.Option("open", help="open | resubmitted | all")) -> None:
    """Dead-lettered input, newest first, with the pointers of its errors (never its content)."""
    async def work(_settings, deps):
        async with deps.uow() as uow:
            return await uow.dead_letters.search(status=None if status == "all" else status)

    rows = _offline(work)
    for r in rows:
        r_errors = "; ".join(f"{e['pointer'] or '/'}: {e['message']}" for e in r.errors)
        typer.echo(f"{r.dead_letter_id}  {r.kind:<15} {r.status:<11} {r.received_at:%Y-%m-%d %H:%M}  {r_errors}")


@dead_letters_app.command("show")
def dead_letters_show(dead_letter_id: str) -> None:
    """One dead letter: its errors and the message as it arrived."""
    async def work(_settings, deps):
        async with deps.uow() as uow:
            return await uow.dead_letters.get(dead_letter_id)

    row = _offline(work)
    if row is None:
        typer.echo("error: no such dead letter", err=True)
        raise typer.Exit(2)
    typer.echo(f"subject: {row.subject}\nstatus: {row.status}\nerrors:")
    for e in row.errors:
        typer.echo(f"  {e['pointer'] or '/'}: {e['message']}")
    typer.echo("message:\n" + row.payload.decode("utf-8", errors="replace"))


@dead_letters_app.command("resubmit")
def dead_letters_resubmit(
    dead_letter_id: str,
    fixed: Optional[typer.FileBinaryRead] = typer.Option(None, "--fixed", help="a file with the corrected message"),
) -> None:
    """Publish a dead letter (or its correction) to its inbound subject again:
    processed as new input under the same rules."""
    import nats

    from hub.credentials import HubBrokerIdentity
    from hub.redelivery import RedeliveryRefused, resubmit_dead_letter

    body = fixed.read() if fixed else None

    async def work(settings, deps):
        if settings.embedded_broker:
            ident = HubBrokerIdentity.load_or_create(settings.resolved_data_dir)
            user, password = ident.user, ident.password
        else:
            user, password = settings.nats_user, settings.nats_password
        nc = await nats.connect(settings.broker_servers, user=user, password=password, connect_timeout=5,
                                allow_reconnect=False)
        try:
            async with deps.uow() as uow:
                await resubmit_dead_letter(uow, deps, nc.jetstream(), dead_letter_id, body, actor="cli")
        finally:
            await nc.close()

    try:
        _offline(work)
    except (LookupError, RedeliveryRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{dead_letter_id}: resubmitted")


def _logging(settings: Settings) -> None:
    from hub.logs import configure

    configure(settings.log_level, settings.log_format)


@app.command()
def run(
    worker: bool = typer.Option(False, "--worker", help="inbound processing, outbox relay and milestone timer; "
                                                         "no HTTP (needs HUB_NATS_URL)"),
    api: bool = typer.Option(False, "--api", help="the HTTP API and console only (needs HUB_NATS_URL)"),
) -> None:
    """Start the hub: (embedded) NATS JetStream, database migrations, inbound
    processing, outbox relay, and the HTTP API on HUB_HTTP_HOST:HUB_HTTP_PORT.
    With --worker or --api, one part of it, so that several processes can
    share an external NATS (cluster) and a PostgreSQL database."""
    if worker and api:
        typer.echo("error: --worker and --api are two different processes; start each on its own", err=True)
        raise typer.Exit(2)
    settings = Settings()
    role = "worker" if worker else "api" if api else "all"
    if role != "all" and settings.embedded_broker:
        typer.echo(f"error: --{role} shares a broker with other processes: set HUB_NATS_URL", err=True)
        raise typer.Exit(2)
    _logging(settings)
    asyncio.run(_run(settings, role))


def collector_for_running() -> None:
    """The garbage collector as the hub runs once started (also `bench.pause`)."""
    # Everything built so far lives as long as the process: keep it out of the
    # garbage collector's generations, so collections stay short under load.
    gc.collect()
    gc.freeze()
    # A batch allocates hundreds of thousands of short-lived objects (almost none in
    # cycles): at the default threshold (700) the collector ran every few events and
    # took 11% of the hub's CPU over a backlog; at 10 000 it takes 3% (`make profile`).
    gc.set_threshold(10_000, 50, 50)


async def _run(settings: Settings, role: str = "all") -> None:
    import uvicorn

    from hub.bootstrap import Hub

    hub = Hub(settings, role=role)
    await hub.start()
    collector_for_running()
    if role == "worker":
        await _serve_worker(settings, hub)
        return
    config = uvicorn.Config(hub.api, host=settings.http_host, port=settings.http_port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    print(f"hub ready: http://{settings.http_host}:{settings.http_port} "
          f"(broker {settings.broker_url}, data {settings.resolved_data_dir})", flush=True)
    try:
        await server.serve()
    finally:
        await hub.stop()


async def _serve_worker(settings: Settings, hub) -> None:
    """A worker has no HTTP: it runs until SIGINT/SIGTERM, touching
    <data_dir>/heartbeat while its broker connection is up (a container's health check)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    beat = settings.resolved_data_dir / "heartbeat"
    beat.parent.mkdir(parents=True, exist_ok=True)
    print(f"hub worker ready (broker {settings.broker_url})", flush=True)
    try:
        while not stop.is_set():
            if hub.healthy():
                beat.touch()
            try:
                await asyncio.wait_for(stop.wait(), timeout=5.0)
            except TimeoutError:
                pass
    finally:
        await hub.stop()


@credential_app.command("issue")
def credential_issue(
    role: str = typer.Option(..., help="publisher | recipient | consent-client | ig-auditor | admin"),
    org: Optional[str] = typer.Option(None, "--org", help="org_id, for publisher and recipient"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Issue a credential: an HTTP bearer token and a NATS user/password."""
    from hub.bootstrap import issue_credential_offline
    from hub.credentials import CredentialError

    try:
        issued = asyncio.run(issue_credential_offline(Settings(), role=role, org_id=org))
    except CredentialError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({k: issued[k] for k in ("http_token", "nats_user", "nats_password")}))
    else:
        for k, v in issued.items():
            typer.echo(f"{k}: {v}")


@credential_app.command("revoke")
def credential_revoke(key: str = typer.Argument(..., help="credential id or NATS user name")) -> None:
    """Revoke a credential: its token stops working and its NATS user is removed."""
    from hub.bootstrap import revoke_credential_offline
    from hub.credentials import CredentialError

    try:
        cred_id = asyncio.run(revoke_credential_offline(Settings(), key))
    except CredentialError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"revoked {cred_id}")


@app.command()
def demo(
    url: str = typer.Option(None, help="the hub's HTTP base URL; default from HUB_HTTP_HOST/PORT"),
) -> None:
    """Against a running hub: record a consent, publish fit notes, show what each
    recipient received and what was withheld and why; withdraw, publish again."""
    from hub.demo import run_demo

    settings = Settings()
    logging.basicConfig(level=logging.WARNING)
    raise typer.Exit(asyncio.run(run_demo(settings, url or f"http://{settings.http_host}:{settings.http_port}")))


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the audit trail's hash chain; report the first broken link (exit 1)."""
    from hub.db import make_engine, migrate
    from hub.ig import verify_audit
    from hub.store import UnitOfWorkFactory

    async def _go():
        engine = make_engine(Settings().db_url)
        try:
            await migrate(engine)
            async with UnitOfWorkFactory(engine)() as uow:
                return await verify_audit(uow)
        finally:
            await engine.dispose()

    result = asyncio.run(_go())
    if result.ok:
        typer.echo(f"audit trail intact: {result.rows} rows, every link verified")
        return
    typer.echo(f"audit trail BROKEN: {result.broken} (rows before it verified: {result.rows})", err=True)
    raise typer.Exit(1)


@app.command("migrate")
def migrate_cmd(down_to: str | None = typer.Option(
        None, "--down-to", metavar="REVISION",
        help="take the schema back to this revision (e.g. 0005) for a rollback to the release that expects it; "
             "stop every hub process first")) -> None:
    """Bring the database schema up to date (hub run does this too)."""
    from hub.db import downgrade, make_engine, migrate

    async def _go() -> None:
        engine = make_engine(Settings().db_url)
        try:
            await (downgrade(engine, down_to) if down_to else migrate(engine))
        finally:
            await engine.dispose()

    asyncio.run(_go())
    typer.echo(f"database at {down_to or 'head'}")


def main() -> None:
    app()
