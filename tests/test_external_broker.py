"""With HUB_NATS_URL set the hub starts no broker of its own and uses the one given."""
from __future__ import annotations

import nats
import orjson

from hub.bootstrap import Hub
from hub.settings import Settings
from hub.streams import DELIVER_STREAM, inbound_subject, recipient_consumer
from tests.conftest import example, fit_note
from tests.servers import external_nats
from tests.test_fit_note_flow import record_consent, settled


async def test_hub_on_an_external_nats(tmp_path, clock):
    with external_nats() as url:
        settings = Settings(data_dir=tmp_path / "var", nats_url=url, relay_interval_s=0.2)
        hub = Hub(settings, clock=clock)
        await hub.start()
        try:
            assert hub.embedded is None and not (tmp_path / "var" / "nats").exists()
            await record_consent(hub, None, example("consent"))
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.publish(inbound_subject("fit-note", "B86001"), orjson.dumps(fit_note()), stream="HUB_INBOUND")
            await settled(hub, 1)
            sub = await js.pull_subscribe_bind(recipient_consumer("EMP-ACME"), stream=DELIVER_STREAM)
            (msg,) = await sub.fetch(1, timeout=5)
            assert orjson.loads(msg.data)["entry"][0]["resource"]["destination"][0]["receiver"]["identifier"][
                "value"] == "EMP-ACME"
            await nc.close()
        finally:
            await hub.stop()
