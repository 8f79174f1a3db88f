"""The review page in headless Chromium (Debian's chromium driven by Playwright): a click on
'Approve' is recorded, and the decision is read back through the API."""

from __future__ import annotations


import httpx
import pytest

from helpers import require_tool
from sarcart.service.config import ServiceConfig
from sarcart.service.server import Service
from svc_support import free_port, make_series, wait_for

pytestmark = pytest.mark.integration
TOKEN = "secret-token-1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_approve_click_is_recorded(tmp_path) -> None:
    chromium = require_tool("chromium", "chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")
    from svc_support import threshold_segmenter

    make_series(tmp_path / "svc" / "instances" / "s1")
    cfg = ServiceConfig(storage=tmp_path / "svc", allowed_aets=["CONSOLE"], token=TOKEN, series_idle_s=0.2,
                        port=free_port(), http_port=free_port())
    svc = Service(cfg, segmenter=threshold_segmenter)
    svc.start()
    base = f"http://127.0.0.1:{cfg.http_port}"
    try:
        wait_for(lambda: svc.db.query("SELECT * FROM jobs WHERE state='done'"), 60, "the job")
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, 30, "the HTTP server")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/review/1?token={TOKEN}")
            assert "NOT FOR CLINICAL USE" in page.inner_text("header")
            page.wait_for_function("document.getElementById('img-axial').naturalWidth > 0")
            assert "volume change" in page.inner_text("#structures")
            page.fill("#user", "dr.who")
            page.click("#approve-GTV")
            page.wait_for_function("document.getElementById('d-GTV').dataset.decision === 'approve'")
            page.screenshot(path=str(tmp_path / "review.png"))
            browser.close()
        decisions = httpx.get(f"{base}/jobs/1/decisions", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    finally:
        svc.stop()
    assert [(d["actor"], d["structure"], d["decision"]) for d in decisions] == [("dr.who", "GTV", "approve")]
    assert (tmp_path / "review.png").stat().st_size > 1000
