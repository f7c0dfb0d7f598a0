"""The directory of organisations (YAML, readable by IG staff): who the hub knows
and how each is reached. Loaded once at start-up into plain values."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEMO_DIRECTORY = Path(__file__).with_name("directory.demo.yaml")

ORG_TYPES = {
    "employer", "oh-provider", "jobcentre", "workwell-service", "access-to-work", "gp",
    "hospital", "publisher",
}


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str  # broker | webhook
    url: str | None = None
    secret_env: str | None = None  # name of a HUB_* variable holding a webhook HMAC secret
    retry_budget_hours: float | None = None  # how long a webhook delivery is retried; default HUB_WEBHOOK_RETRY_BUDGET_S


@dataclass(frozen=True, slots=True)
class Organisation:
    id: str
    type: str
    name: str
    delivery: Delivery | None = None
    size: str | None = None
    oh_provider: str | None = None
    areas: tuple[str, ...] = ()
    nations: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_recipient(self) -> bool:
        return self.delivery is not None


class DirectoryError(ValueError):
    pass


@dataclass(frozen=True)
class Directory:
    organisations: dict[str, Organisation]

    def get(self, org_id: str | None) -> Organisation | None:
        return self.organisations.get(org_id) if org_id else None

    def knows(self, org_id: str | None) -> bool:
        return org_id in self.organisations if org_id else False

    def _serving(self, org_type: str, attr: str, value: str | None) -> Organisation | None:
        if not value:
            return None
        for org in self.organisations.values():
            if org.type == org_type and value in getattr(org, attr):
                return org
        return None

    def jobcentre_for_area(self, area: str | None) -> Organisation | None:
        return self._serving("jobcentre", "areas", area)

    def workwell_for_area(self, area: str | None) -> Organisation | None:
        return self._serving("workwell-service", "areas", area)

    def access_to_work_for_nation(self, nation: str | None) -> Organisation | None:
        return self._serving("access-to-work", "nations", nation)

    def recipients(self, channel: str | None = None) -> list[Organisation]:
        return [
            o for o in self.organisations.values()
            if o.delivery is not None and (channel is None or o.delivery.channel == channel)
        ]


def parse_directory(data: dict) -> Directory:
    orgs: dict[str, Organisation] = {}
    for i, raw in enumerate((data or {}).get("organisations") or []):
        where = f"organisations[{i}]"
        try:
            org_id = str(raw["id"])
            org_type = str(raw["type"])
            name = str(raw.get("name") or org_id)
        except (KeyError, TypeError) as exc:
            raise DirectoryError(f"{where}: needs id and type") from exc
        if org_type not in ORG_TYPES:
            raise DirectoryError(f"{where} ({org_id}): unknown type {org_type!r}")
        if org_id in orgs:
            raise DirectoryError(f"{where}: duplicate id {org_id}")
        if not org_id.replace("-", "").replace("_", "").isalnum():
            raise DirectoryError(f"{where}: id may hold only letters, digits, '-' and '_'")
        delivery = None
        if raw.get("delivery"):
            d = raw["delivery"]
            channel = d.get("channel")
            if channel not in ("broker", "webhook"):
                raise DirectoryError(f"{where} ({org_id}): delivery.channel must be broker or webhook")
            if channel == "webhook" and not d.get("url"):
                raise DirectoryError(f"{where} ({org_id}): a webhook needs a url")
            budget = d.get("retry_budget_hours")
            if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
                raise DirectoryError(f"{where} ({org_id}): delivery.retry_budget_hours must be a positive number")
            delivery = Delivery(channel=channel, url=d.get("url"), secret_env=d.get("secret_env"),
                                retry_budget_hours=budget)
        known = {"id", "type", "name", "delivery", "size", "oh_provider", "areas", "nations"}
        orgs[org_id] = Organisation(
            id=org_id,
            type=org_type,
            name=name,
            delivery=delivery,
            size=raw.get("size"),
            oh_provider=raw.get("oh_provider"),
            areas=tuple(str(a).upper() for a in raw.get("areas") or ()),
            nations=tuple(str(n).lower() for n in raw.get("nations") or ()),
            extra={k: v for k, v in raw.items() if k not in known},
        )
    for org in orgs.values():
        if org.oh_provider and org.oh_provider not in orgs:
            raise DirectoryError(f"{org.id}: oh_provider {org.oh_provider} is not in the directory")
    return Directory(orgs)


def load_directory(path: str | Path | None = None) -> Directory:
    p = Path(path) if path else DEMO_DIRECTORY
    with p.open("rb") as fh:
        return parse_directory(yaml.safe_load(fh))
