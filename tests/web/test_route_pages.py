"""Settings → Routes through a real uvicorn with httpx, as a browser without JavaScript uses
it: the config file's routes listed read-only, a route added through the form (in force on
this node at once) and removed after its confirmation page; every bad input shown beside its
field with the API's status, never a 500; refused to whom /api/v1/routes refuses (scope
`admin`: a member), and to a form without its CSRF token."""

from __future__ import annotations

import re

import pytest
from markupsafe import escape

from storage.routes import add_route
from tests.support.api import Api, ApiFactory
from tests.support.service import sink_pool
from tests.support.sink import Sink
from tests.web.conftest import SignIn
from web.guard import CSRF_TEXT

pytestmark = pytest.mark.timeout(90)
PAGE = "/settings/routes"


@pytest.fixture
async def api(api_client: ApiFactory, sink: Sink) -> Api:
    """Two pools (the default `sink`, and `bulk relay` in the group `bulk`), and one route
    in the config file."""
    return await api_client(
        pools=[
            sink_pool(sink, is_default=True),
            sink_pool(sink, name="bulk relay", ip_pool="bulk"),
        ],
        routes=[{"recipient_domain": "gmail.test", "pool": "sink"}],
    )


def route_id(text: str, domain: str) -> str:
    found = re.search(
        rf'id="route-(rte_[0-9a-f]+)">\s*<th scope="row"><code>{re.escape(domain)}<', text
    )
    assert found, domain
    return found.group(1)


async def test_the_config_routes_are_listed_read_only(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    home = (await owner.get("/")).text
    assert f'href="{PAGE}"' in home
    shown = await owner.get(PAGE)
    assert shown.status_code == 200 and "<h1>Routes</h1>" in shown.text
    assert f'href="{PAGE}" aria-current="page"' in shown.text
    assert "<code>gmail.test</code>" in shown.text and "pool <strong>sink</strong>" in shown.text
    assert "read-only: change it in the config file" in shown.text
    assert "/remove" not in shown.text  # nothing to remove: the file's entry stays
    assert '<option value="bulk relay">' in shown.text
    assert "Groups now: bulk, transactional." in shown.text
    assert (await owner.get(f"{PAGE}/gmail.test/remove")).status_code == 404


async def test_a_route_is_added_in_force_at_once_and_removed(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    added = await owner.post(PAGE, {"recipient_domain": " .Example.TEST ", "ip_pool": "bulk"})
    assert added.status_code == 303 and added.headers["location"] == f"{PAGE}?done=added"
    listed = (await owner.get(added.headers["location"])).text
    assert "Route added" in listed and "every subdomain of example.test" in listed
    assert "group <strong>bulk</strong>" in listed and "no active pool" not in listed
    suffix = route_id(listed, ".example.test")
    identities = api.svc.identities
    assert identities is not None
    assert ".example.test" in {route.recipient_domain for route in identities.domain_routes}
    pooled = await owner.post(PAGE, {"recipient_domain": "b.test", "pool": "bulk relay"})
    assert pooled.status_code == 303
    listed = (await owner.get(PAGE)).text
    assert "pool <strong>bulk relay</strong>" in listed and route_id(listed, "b.test")
    stored = (await api.get("/api/v1/routes", key=await api.key("admin"))).json()["routes"]
    assert [(r["recipient_domain"], r["source"]) for r in stored] == [
        ("gmail.test", "config"), (".example.test", "api"), ("b.test", "api")
    ]  # fmt: skip

    asked = await owner.get(f"{PAGE}/{suffix}/remove")
    assert asked.status_code == 200 and "Remove the route for .example.test?" in asked.text
    assert "through the group bulk" in asked.text and 'class="danger"' in asked.text
    removed = await owner.post(f"{PAGE}/{suffix}/remove")
    assert removed.status_code == 303 and removed.headers["location"] == f"{PAGE}?done=removed"
    listed = (await owner.get(removed.headers["location"])).text
    assert "Route removed" in listed and ".example.test" not in listed and "b.test" in listed
    assert ".example.test" not in {route.recipient_domain for route in identities.domain_routes}
    assert (await owner.post(f"{PAGE}/{suffix}/remove")).status_code == 404
    for path in (f"{PAGE}/rte_nope/remove", f"{PAGE}/{'x' * 300}/remove"):
        assert (await owner.get(path)).status_code == 404, path
        assert (await owner.post(path)).status_code == 404, path


async def test_a_bad_input_is_shown_beside_its_field(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    domain, pool, group = "recipient_domain", "pool", "ip_pool"
    cases = [
        ({domain: "a b.test", pool: "sink"}, 400, domain, "is not a domain name"),
        ({domain: "", pool: "sink"}, 400, domain, "a domain such as gmail.com"),
        ({domain: "x" * 300, pool: "sink"}, 400, domain, "a domain such as gmail.com"),
        ({domain: "a\x00.test", pool: "sink"}, 400, domain, "not a domain"),
        ({domain: "a.test"}, 400, pool, "give exactly one of"),
        ({domain: "a.test", pool: "sink", group: "bulk"}, 400, pool, "give exactly one of"),
        ({domain: "a.test", pool: "nope"}, 422, pool, "no pool is named"),
        ({domain: "a.test", pool: "x\ny"}, 400, pool, "no control characters"),
        ({domain: "a.test", group: "-bad"}, 400, group, "letters, digits"),
        ({domain: "Gmail.test", group: "bulk"}, 409, domain, "routed by the config file"),
    ]
    for fields, status, name, text in cases:
        refused = await owner.post(PAGE, fields)
        assert refused.status_code == status, (fields, refused.text)
        problem = re.search(rf'class="field-problem" id="{name}-problem">([^<]*)<', refused.text)
        assert problem and text in problem.group(1), (fields, problem)
        assert f'id="{name}"' in refused.text and 'aria-invalid="true"' in refused.text
        assert "Some fields need another look." in refused.text
    kept = await owner.post(PAGE, {"recipient_domain": "kept.test", "ip_pool": "-bad"})
    assert 'value="kept.test"' in kept.text and 'value="-bad"' in kept.text
    made = await owner.post(PAGE, {"recipient_domain": "c.test", "ip_pool": "bulk"})
    assert made.status_code == 303
    twice = await owner.post(PAGE, {"recipient_domain": "C.test", "pool": "sink"})
    assert twice.status_code == 409 and "exists already" in twice.text
    assert 'id="recipient_domain-problem"' in twice.text
    form = {"Origin": owner.origin, "Content-Type": "application/x-www-form-urlencoded"}
    for body in (b"recipient_domain=%ff&pool=sink", b"recipient_domain=\xff&pool=sink"):
        headers = form | {"X-CSRF-Token": owner.csrf}
        not_utf8 = await owner.http.post(PAGE, content=body, headers=headers)
        assert not_utf8.status_code == 400 and "<h1>" in not_utf8.text, body


async def test_a_route_whose_pool_is_gone_and_one_the_config_overrides(
    api: Api, person: SignIn
) -> None:
    owner = await person("ops@example.com")
    await add_route(api.svc.db, "gmail.test", ip_pool="bulk")  # stored before the file said so
    await add_route(api.svc.db, "nowhere.test", ip_pool="empty-group")
    listed = (await owner.get(PAGE)).text
    assert "not in force: the config file routes this domain" in listed
    assert listed.count("no active pool: mail to this domain is refused") == 1
    assert route_id(listed, "gmail.test") and route_id(listed, "nowhere.test")


async def test_routes_are_refused_to_whom_the_api_refuses_them(api: Api, person: SignIn) -> None:
    member = await person("m@example.com", "member")
    assert f'href="{PAGE}"' not in (await member.get("/")).text
    refused = await member.get(PAGE)
    assert refused.status_code == 403 and "<h1>Refused</h1>" in refused.text
    forged = await member.post(PAGE, {"recipient_domain": "m.test", "ip_pool": "bulk"})
    assert forged.status_code == 403
    admin = await person("a@example.com", "admin")
    assert f'href="{PAGE}"' in (await admin.get("/")).text
    assert (await admin.get(PAGE)).status_code == 200
    made = await admin.post(PAGE, {"recipient_domain": "a.test", "ip_pool": "bulk"})
    assert made.status_code == 303
    rte = route_id((await admin.get(PAGE)).text, "a.test")
    assert (await member.get(f"{PAGE}/{rte}/remove")).status_code == 403
    assert (await member.post(f"{PAGE}/{rte}/remove")).status_code == 403
    assert "m.test" not in (await admin.get(PAGE)).text
    signed_out = await api.http.get(PAGE)
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")


async def test_a_form_without_its_csrf_token_changes_nothing(api: Api, person: SignIn) -> None:
    owner = await person("ops@example.com")
    fields = {"recipient_domain": "csrf.test", "ip_pool": "bulk"}
    refused = await owner.post(PAGE, fields, token=False)
    assert refused.status_code == 403 and str(escape(CSRF_TEXT)) in refused.text
    assert "csrf.test" not in (await owner.get(PAGE)).text
    await owner.post(PAGE, {"recipient_domain": "kept.test", "ip_pool": "bulk"})
    rte = route_id((await owner.get(PAGE)).text, "kept.test")
    kept = await owner.post(f"{PAGE}/{rte}/remove", token=False)
    assert kept.status_code == 403 and "kept.test" in (await owner.get(PAGE)).text
