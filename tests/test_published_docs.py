"""The AsyncAPI (broker side) and OpenAPI (HTTP side) documents: served by the
running hub, and the checked-in copies under schemas/ in step with the code."""
from __future__ import annotations

import json

import httpx

from hub.docs import DOCS_DIR, canonical


def test_checked_in_documents_match_the_code():
    for name, text in canonical().items():
        assert (DOCS_DIR / name).read_text() == text, f"run `python -m hub.docs` and commit schemas/{name}"


DOCUMENTS = ("/asyncapi.json", "/asyncapi", "/openapi.json", "/docs", "/redoc")


async def test_the_running_hub_serves_both_to_a_credential_only(hub, creds):
    """Contract §9: every path but /health needs a credential, the API's own
    descriptions included: any live one, as a bearer token or the IG console's
    session cookie (a browser signed in to the console reads /docs)."""
    from hub.console import SESSION_COOKIE
    from tests.test_http_api import bearer

    gp = await creds.issue("publisher", "B86001")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub") as anyone:
        for path in DOCUMENTS:
            assert (await anyone.get(path)).status_code == 401, path
        assert (await anyone.get("/health")).status_code == 200
        assert (await anyone.get("/openapi.json", headers=bearer({"http_token": "hub_not-a-token"}))).status_code == 401
    ig = await creds.issue("ig-auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub",
                                 cookies={SESSION_COOKIE: ig["http_token"]}) as browser:
        assert (await browser.get("/docs")).status_code == 200
        assert (await browser.get("/openapi.json")).status_code == 200
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.api), base_url="http://hub",
                                 headers=bearer(gp)) as http:
        asyncapi = (await http.get("/asyncapi.json")).json()
        assert set(asyncapi["channels"]) == {"hub.inbound.{kind}.{org_id}", "hub.deliver.{org_id}", "hub.dlq.{kind}"}
        assert asyncapi["servers"]["development"]["host"] == f"127.0.0.1:{hub.settings.nats_port}"
        page = await http.get("/asyncapi")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        openapi = (await http.get("/openapi.json")).json()
        assert openapi == json.loads((DOCS_DIR / "openapi.json").read_text())
        assert "/api/v1/inbound/{kind}" in openapi["paths"] and "/fhir/Consent" in openapi["paths"]
        assert (await http.get("/docs")).status_code == 200 and (await http.get("/redoc")).status_code == 200
