"""Swagger UI at /docs in a real headless browser (Debian's chromium, driven by Playwright)
against the service under gunicorn on its embedded store."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import future
from servers import Gunicorn
from sessionsvc.edge import DOCS_CSP

CHROMIUM = shutil.which("chromium") or next(
    (path for path in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if os.path.exists(path)), None
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJicm93c2VyIn0.c2lnbmF0dXJl-browser"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on this machine (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture
def service(tmp_path):
    instance = Gunicorn(tmp_path / "gunicorn.log").start()
    yield instance
    instance.stop()


@pytest.fixture
def page(service):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.problems = []
        page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        yield page
        browser.close()


def try_it_out(page, operation_id: str, fill) -> tuple[str, dict]:
    """Open an operation, press "Try it out", fill it in, execute; (status, JSON body)."""
    operation = page.locator(f"#operations-session-storage-{operation_id}")
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    fill(operation)
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status")
    status.wait_for()
    body = operation.locator(".live-responses-table .response-col_description pre").first.inner_text()
    return status.inner_text().strip(), json.loads(body)


def test_swagger_ui_lists_the_operations_and_try_it_out_saves_then_reads_a_token(service, page):
    response = page.goto(service.base + "/docs")
    assert response.headers["content-security-policy"] == DOCS_CSP
    page.wait_for_selector(".opblock")
    assert page.locator('[id^="operations-session-storage-"]').count() == 9
    assert page.locator('[id^="operations-health-"]').count() == 2

    body = json.dumps({"user_id": "usr_browser", "token": TOKEN, "expires_at": future()})
    status, created = try_it_out(page, "createToken", lambda op: op.locator("textarea.body-param__text").fill(body))
    assert status == "201"
    assert created["user_id"] == "usr_browser" and "token" not in created

    status, detail = try_it_out(
        page, "getToken", lambda op: op.locator('input[placeholder="record_id"]').fill(created["id"])
    )
    assert status == "200"
    assert detail["id"] == created["id"] and detail["token"] == TOKEN

    page.locator(".models .model-box-control").first.click()  # expand a schema, too
    page.locator(".models .model-box .model").first.wait_for()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "swagger-ui.png"), full_page=True)
    assert page.problems == [], "the page logged errors (a Content-Security-Policy violation?)"


def test_try_it_out_with_the_documents_own_examples_creates_then_refreshes_a_token(service, page):
    """The request bodies Swagger UI fills in are the document's examples; sent unchanged
    they must be accepted (their expiry is dated when the document is served)."""
    page.goto(service.base + "/docs")
    page.wait_for_selector(".opblock")

    status, created = try_it_out(page, "createToken", lambda operation: None)
    assert status == "201", created

    status, refreshed = try_it_out(
        page, "refreshToken", lambda op: op.locator('input[placeholder="record_id"]').fill(created["id"])
    )
    assert status == "200", refreshed
    assert refreshed["id"] == created["id"] and refreshed["expires_at"] > created["expires_at"]
    assert page.problems == []
