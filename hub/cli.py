"""The `hub` command (Typer). Settings come from HUB_* environment variables."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Optional

import typer

from hub.settings import Settings

app = typer.Typer(help="Health and work integration hub", no_args_is_help=True, add_completion=False)
credential_app = typer.Typer(help="Issue and revoke credentials (HTTP token + NATS user)", no_args_is_help=True)
app.add_typer(credential_app, name="credential")
audit_app = typer.Typer(help="The hash-chained audit trail", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _logging(settings: Settings) -> None:
    from hub.logs import configure

    configure(settings.log_level, settings.log_format)


@app.command()
def run() -> None:
    """Start the hub: (embedded) NATS JetStream, database migrations, inbound
    processing, outbox relay, and the HTTP API on HUB_HTTP_HOST:HUB_HTTP_PORT."""
    settings = Settings()
    _logging(settings)
    asyncio.run(_run(settings))


async def _run(settings: Settings) -> None:
    import uvicorn

    from hub.bootstrap import Hub

    hub = Hub(settings)
    await hub.start()
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
def migrate_cmd() -> None:
    """Bring the database schema up to date (hub run does this too)."""
    from hub.db import make_engine, migrate

    async def _go() -> None:
        engine = make_engine(Settings().db_url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(_go())
    typer.echo("database at head")


def main() -> None:
    app()
