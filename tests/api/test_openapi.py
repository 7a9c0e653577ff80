"""GET /openapi.json documents every route the app serves, with its request body and
responses, and every schema it refers to exists.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from starlette.routing import Route

from tests.support.api import Api

pytestmark = pytest.mark.timeout(30)


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "$ref":
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


async def test_every_route_and_method_is_documented(api: Api) -> None:
    response = await api.http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    app = api.svc._http[0].server.config.app
    served = {
        (re.sub(r"{(\w+):\w+}", r"{\1}", route.path), method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    for path in ("/v1/send", "/mail/v1/send", "/api/v1/send", "/v1/messages/{message_id}"):
        assert path in document["paths"]


async def test_send_documents_its_body_and_every_answer(api: Api) -> None:
    document = (await api.http.get("/openapi.json")).json()
    send = document["paths"]["/v1/send"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "SendRequest"
    )
    assert {"200", "202", "400", "401", "403", "413", "422", "429"} <= set(send["responses"])
    request = document["components"]["schemas"]["SendRequest"]
    assert request["properties"]["to"]["maxItems"] == 100
    assert request["properties"]["subject"]["maxLength"] == 998
    assert "from" in request["properties"]
    assert refs(document) <= set(document["components"]["schemas"])
    json.dumps(document)  # serialisable as it stands


async def test_every_integer_query_parameter_refuses_other_digits_with_a_400(api: Api) -> None:
    """'²'.isdigit() is true and int('²') raises: a page number written so was a 500."""
    document = (await api.http.get("/openapi.json")).json()
    key = await api.key("admin")
    found = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query" or parameter["schema"]["type"] != "integer":
                    continue
                found += 1
                url = re.sub(r"{\w+}", "x", path)
                for digits in ("²", "٣"):
                    answer = await api.http.request(
                        method.upper(),
                        url,
                        params={parameter["name"]: digits},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    assert answer.status_code in (400, 404), (path, digits, answer.text)
    assert found >= 5


async def test_reputation_documents_the_seed_fields(api: Api) -> None:
    document = (await api.http.get("/openapi.json")).json()
    for path in (
        "/mail/accounts/reputation",
        "/api/v1/reputation",
        "/api/v1/reputation/{kind}/{id}",
    ):
        assert "get" in document["paths"][path]
    item = document["components"]["schemas"]["AccountReputation"]["properties"]
    assert list(item) == [
        "account_id", "email", "reputation_score", "warmup_status", "daily_limit",
        "sent_today", "blacklist_status", "last_checked_at", "reputation_status", "components",
    ]  # fmt: skip
