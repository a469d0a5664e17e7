"""The web console over HTTP (no browser): sign-in, cookie flags, CSRF, viewer refusals, expiry, errors."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy.orm import Session

from facefleet.platform.auth import hash_token
from facefleet.platform.db.models import ApiKey, AuditEvent
from facefleet.platform.models import service as registry
from facefleet.platform.settings import get_settings
from facefleet.ui import session as console_session
from tests.ui.conftest import Console

PAGES = [
    "/ui/datasets",
    "/ui/datasets/faces-a",
    "/ui/datasets/faces-verify",
    "/ui/runs",
    "/ui/runs/1",
    "/ui/compare?runs=1&runs=2",
    "/ui/models",
    "/ui/models/facefleet",
    "/ui/devices",
    "/ui/deployments",
    "/ui/deployments/2",
    "/ui/policies",
    "/ui/audit",
]


def sign_in(url: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    form = client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    response = client.post("/ui/login", data={"api_key": key, "csrf": token.group(1), "next": "/ui/models"})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/models"
    return client


def csrf_of(client: httpx.Client, page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found
    return found.group(1)


def test_root_redirects_and_pages_need_a_session(console: Console) -> None:
    with httpx.Client(base_url=console.url, follow_redirects=False) as client:
        assert client.get("/").headers["location"] == "/ui"
        assert client.get("/ui").headers["location"] == "/ui/runs"
        response = client.get("/ui/runs/1")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=%2Fui%2Fruns%2F1"
        # A forged cookie is ignored.
        client.cookies.set(console_session.COOKIE_NAME, "eyJrIjoxfQ.AAAA")
        assert client.get("/ui/runs").status_code == 303


def test_sign_in_sets_a_strict_httponly_cookie_and_every_page_renders(console: Console) -> None:
    with httpx.Client(base_url=console.url, follow_redirects=False) as client:
        form = client.get("/ui/login")
        assert "Content-Security-Policy" in form.headers
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        wrong = client.post("/ui/login", data={"api_key": "ffk_nope", "csrf": token, "next": "/ui/runs"})
        assert wrong.status_code == 401 and "unknown API key" in wrong.text
        no_csrf = client.post("/ui/login", data={"api_key": console.seeded.admin_key, "csrf": "x"})
        assert no_csrf.status_code == 403
    client = sign_in(console.url, console.seeded.admin_key)
    cookie = client.cookies.jar
    set_cookie = [c for c in cookie if c.name == console_session.COOKIE_NAME][0]
    assert set_cookie.has_nonstandard_attr("HttpOnly")
    assert console.seeded.admin_key not in (set_cookie.value or "")
    for page in PAGES:
        response = client.get(page)
        assert response.status_code == 200, (page, response.text[:500])
        assert "Sign out" in response.text
    assert "Auto-promote declined" in client.get("/ui/models/facefleet").text
    assert "not better than production v1" in client.get("/ui/models/facefleet").text
    # The scripts read the API with the cookie (GET only); writes through /v1 need the key itself.
    assert client.get("/v1/runs/1/metrics").status_code == 200
    assert client.post("/v1/runs/1:cancel").status_code == 401


def test_login_response_cookie_flags(console: Console) -> None:
    with httpx.Client(base_url=console.url, follow_redirects=False) as client:
        form = client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        response = client.post("/ui/login", data={"api_key": console.seeded.admin_key, "csrf": token})
        header = [h for h in response.headers.get_list("set-cookie") if h.startswith("facefleet_session=")][0]
        assert "HttpOnly" in header and "SameSite=strict" in header and "Max-Age=28800" in header


def test_admin_promotes_with_csrf_and_a_forged_post_changes_nothing(console: Console) -> None:
    client = sign_in(console.url, console.seeded.admin_key)
    forged = client.post(
        "/ui/models/facefleet/versions/2/promote", data={"alias": "production", "csrf": "bad"}
    )
    assert forged.status_code == 403
    with Session(console.engine) as session:
        assert registry.get_model_version(session, "facefleet", "production").version == 1
    token = csrf_of(client, "/ui/models/facefleet")
    done = client.post("/ui/models/facefleet/versions/2/promote", data={"alias": "production", "csrf": token})
    assert done.status_code == 303 and "notice=" in done.headers["location"]
    with Session(console.engine) as session:
        assert registry.get_model_version(session, "facefleet", "production").version == 2
        event = session.query(AuditEvent).filter_by(action="models.promote").one()
        assert event.actor.endswith(":ops-admin") and event.details["to"] == 2
    bad_alias = client.post("/ui/models/facefleet/versions/2/promote", data={"alias": "../x", "csrf": token})
    assert bad_alias.status_code == 422


def test_viewer_sees_no_write_controls_and_its_writes_are_refused(console: Console) -> None:
    client = sign_in(console.url, console.seeded.viewer_key)
    for page in PAGES:
        text = client.get(page).text
        assert 'class="write' not in text and "danger write" not in text, page
    token = csrf_of(client, "/ui/runs")  # the sign-out form's token
    for path in (
        "/ui/models/facefleet/versions/2/promote",
        f"/ui/runs/{console.seeded.running_run_id}/cancel",
        f"/ui/deployments/{console.seeded.deployment_id}/rollback",
        f"/ui/policies/{console.seeded.policy_id}/disable",
    ):
        response = client.post(path, data={"csrf": token, "alias": "production"})
        assert response.status_code == 403, path
        assert "read-only" in response.text
    with Session(console.engine) as session:
        assert registry.get_model_version(session, "facefleet", "production").version == 1


def test_rollback_cancel_and_policy_toggle(console: Console) -> None:
    client = sign_in(console.url, console.seeded.admin_key)
    token = csrf_of(client, "/ui/runs")
    rolled = client.post(f"/ui/deployments/{console.seeded.deployment_id}/rollback", data={"csrf": token})
    assert rolled.status_code == 303, rolled.text
    page = client.get(rolled.headers["location"])
    assert "rolling group" in page.text and "facefleet v1" in page.text
    cancelled = client.post(f"/ui/runs/{console.seeded.running_run_id}/cancel", data={"csrf": token})
    assert cancelled.status_code == 303
    assert "cancelled" in client.get(f"/ui/runs/{console.seeded.running_run_id}").text
    again = client.post(f"/ui/runs/{console.seeded.running_run_id}/cancel", data={"csrf": token})
    assert "error=" in again.headers["location"]
    off = client.post(f"/ui/policies/{console.seeded.policy_id}/disable", data={"csrf": token})
    assert "disabled" in client.get(off.headers["location"]).text


@pytest.mark.parametrize(
    ("page", "status", "text"),
    [
        ("/ui/compare?runs=1", 422, "pick 2 to 4"),
        ("/ui/compare?runs=1,2,3,4,5", 422, "pick 2 to 4"),
        ("/ui/compare?runs=1,x", 422, "not a positive whole number"),
        ("/ui/runs/999", 404, "999"),
        ("/ui/runs?status=bogus", 422, "unknown"),
        ("/ui/models/nope", 404, "nope"),
        ("/ui/datasets/faces-a/versions/1/samples/9999.png", 404, "no image 9999"),
        ("/ui/nowhere", 404, "no console page"),
    ],
)
def test_bad_addresses_get_an_html_error_page(console: Console, page: str, status: int, text: str) -> None:
    client = sign_in(console.url, console.seeded.viewer_key)
    response = client.get(page)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert text in response.text


def test_expired_revoked_and_signed_out_sessions_end(console: Console) -> None:
    client = sign_in(console.url, console.seeded.admin_key)
    secret = console_session.session_secret(get_settings())
    with Session(console.engine) as session:
        key = session.query(ApiKey).filter_by(key_hash=hash_token(console.seeded.admin_key)).one()
        expired = console_session.issue(secret, key_id=key.id, key_hash=key.key_hash, lifetime_seconds=-1)
    with httpx.Client(base_url=console.url, follow_redirects=False) as other:
        other.cookies.set(console_session.COOKIE_NAME, expired)
        assert other.get("/ui/runs").status_code == 303
    token = csrf_of(client, "/ui/runs")
    out = client.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303 and "facefleet_session=" in out.headers["set-cookie"]
    assert client.get("/ui/runs").status_code == 303
    client = sign_in(console.url, console.seeded.admin_key)
    with Session(console.engine) as session:
        key = session.query(ApiKey).filter_by(key_hash=hash_token(console.seeded.admin_key)).one()
        key.revoked_at = datetime.now(timezone.utc)
        session.commit()
    assert client.get("/ui/runs").status_code == 303


def test_thumbnails_are_reencoded_pngs(console: Console) -> None:
    client = sign_in(console.url, console.seeded.viewer_key)
    page = client.get("/ui/datasets/faces-a").text
    sources = re.findall(r'src="(/ui/datasets/faces-a/versions/1/samples/\d+\.png)"', page)
    assert len(sources) == 6  # one per identity
    image = client.get(sources[0])
    assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")
