"""Settings are data: environment variables HUB_* (contract §10), nothing else."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


MIN_PULL_S = 0.0002  # a shorter pull would be asked for as one that never expires (nats-py's `expires`)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="where the embedded broker's and database's files live")
    nats_url: str | None = Field(None, description="a NATS server or cluster to use instead of the embedded one")
    nats_port: int = Field(4222, description="the embedded nats-server's port")
    nats_user: str | None = Field(None, description="the hub's own user on an external NATS")
    nats_password: str | None = Field(None, description="the hub's own password on an external NATS")
    database_url: str | None = Field(None, description="SQLAlchemy async URL; default SQLite in data_dir")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    directory: Path | None = Field(None, description="organisations YAML; default the shipped demo directory")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas per stream (3 in a cluster)")
    deliver_max_age_days: float = Field(30, description="how long HUB_DELIVER keeps a delivery for its recipient")
    dedupe_window_s: float = Field(120, description="JetStream duplicate window for deliveries (Nats-Msg-Id): a "
                                                   "re-publish after a crash within it is dropped by the stream")
    inbound_batch: int = Field(500, ge=1, le=1000, description="inbound messages fetched per pull, and "
                                                            "committed in one transaction (at most: a pull takes "
                                                            "what is waiting)")
    inbound_batch_wait_s: float = Field(0.001, ge=MIN_PULL_S, le=1.0, description="how long a pull waits, in all, for "
                                        "more messages to fill its batch once its first is in (the most latency "
                                        "batching adds; messages already waiting are taken without it)")
    inbound_max_attempts: int = Field(5, ge=1, description="tries of an inbound message whose processing raises, "
                                                         "before it is dead-lettered as poison")
    webhook_retry_budget_s: float = Field(86400, description="how long a webhook delivery is retried before it is "
                                                             "dead-lettered (per recipient: delivery.retry_budget_hours)")
    relay_interval_s: float = Field(1.0, description="how often the outbox relay looks for undelivered rows")
    milestone_poll_s: float = Field(60.0, description="how often the 28-day milestone timer looks for due episodes")
    audit_key: str | None = Field(None, description="key for the audit's person hashes; shared by all workers")
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$", description="json (structured) or text")

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def embedded_broker(self) -> bool:
        return not self.nats_url

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.resolved_data_dir / 'hub.db'}"

    @property
    def broker_url(self) -> str:
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"

    @property
    def broker_servers(self) -> list[str]:
        """HUB_NATS_URL may list a cluster's nodes, comma-separated."""
        return [u.strip() for u in self.broker_url.split(",") if u.strip()]
