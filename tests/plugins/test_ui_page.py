"""The CDC page of the Airflow UI (``/cdc/ui/``) in Debian's headless Chromium, against a real API server after a
real ``airflow dags test`` run (see conftest.py): it shows the pipeline with its last batch, a held table with its
button, and the lineage diagram; a click on a held table's accept button accepts its schema change. The screenshot
stays in the test's tmp dir; its path is printed (``pytest -s``)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import psycopg
import pytest
from cdc_testing import dags_test
from headless_chromium import DevToolsPage, chromium_binary, png_colours, run_chromium

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]


def test_the_page_is_an_external_view_of_the_airflow_ui(api_server):
    plugins = api_server.get("/api/v2/plugins").json()["plugins"]
    (cdc,) = [plugin for plugin in plugins if plugin["name"] == "cdc"]
    (view,) = cdc["external_views"]
    assert view["href"] == "/cdc/ui/" and view["url_route"] == "cdc" and view["destination"] == "nav"
    page = api_server.get("/cdc/ui/", user=None)  # the shell holds no data: its API calls are authenticated
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "src=\"http" not in page.text  # everything inline, no CDN
    assert api_server.get("/cdc/ui", user=None, follow_redirects=True).url.path == "/cdc/ui/"


def test_the_page_shows_the_pipeline_its_last_batch_and_held_tables(api_server, tmp_path: Path):
    chromium = chromium_binary()
    pipeline = api_server.pipeline
    stopped = api_server.post(f"/cdc/api/v1/sources/{pipeline.source_id}/stop", json=["orders"])
    assert stopped.status_code == 200, stopped.text
    with psycopg.connect(pipeline.sink_url) as conn:
        (last_batch,) = conn.execute("SELECT batch_id FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to DESC "
                                     "LIMIT 1", (pipeline.source_id,)).fetchone()
    page = f"{api_server.base}/cdc/ui/#token={api_server.tokens['admin']}"
    try:
        dom = html.unescape(run_chromium(chromium, tmp_path / "chromium", page, "--dump-dom").decode())
        assert 'data-loaded="true"' in dom, re.search(r'id="error"[^>]*>(.*?)</div>', dom, re.S)
        row = re.search(rf'<tr data-source="{pipeline.source_id}">(.*?)</tr>', dom, re.S)
        assert row, dom[-3000:]
        assert f"cdc_{pipeline.source_id}" in row.group(1) and last_batch in row.group(1)
        assert "100 %" in row.group(1)  # the quality score of the snapshot's batch
        assert re.search(r'data-action="start"[^>]*data-table="public.orders"', dom), dom[-3000:]
        assert "stopped through the REST API by admin" in dom
        assert re.search(r'<div id="flow"[^>]*><svg', dom) and "public.users" in dom
        assert pipeline.password not in dom

        screenshot = tmp_path / "cdc_page.png"
        run_chromium(chromium, tmp_path / "chromium", page, f"--screenshot={screenshot}")
        data = screenshot.read_bytes()
        width, height, colours = png_colours(data)
        assert (width, height) == (1600, 1000) and colours >= 20, (width, height, colours)
        print(f"\nCDC page screenshot: {screenshot} ({len(data)} bytes, {colours}+ colours)")
    finally:
        api_server.post(f"/cdc/api/v1/sources/{pipeline.source_id}/start", json=["orders"])


def test_without_a_session_the_page_asks_to_sign_in(api_server, tmp_path: Path):
    chromium = chromium_binary()
    dom = run_chromium(chromium, tmp_path / "chromium", f"{api_server.base}/cdc/ui/", "--dump-dom").decode()
    assert 'data-loaded="error"' in dom and "Not signed in to Airflow" in dom


def test_the_accept_button_accepts_a_held_schema_change_and_replays_its_changes(api_server, tmp_path: Path):
    """bigint -> text is not BACKWARD compatible: the run holds orders. The page lists it with its accept button; a
    click (through the DevTools protocol, as a user's) accepts it: the held change reaches the sink, the page no
    longer lists the table, and the audit trail names the Airflow user."""
    from airflow_provider_cdc.audit import read_audit

    chromium = chromium_binary()
    pipeline = api_server.pipeline
    with psycopg.connect(pipeline.source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN user_id TYPE text")
        conn.execute("UPDATE orders SET user_id = 'u-7' WHERE id = 3")
    assert "public.orders" in dags_test(pipeline.source_id, pipeline.config_dir, ok=False)
    button = f'button[data-action="accept"][data-table="public.orders"][data-source="{pipeline.source_id}"]'
    page_url = f"{api_server.base}/cdc/ui/#token={api_server.tokens['admin']}"
    with DevToolsPage(chromium, tmp_path / "chromium", page_url) as page:
        page.wait_for("document.body.dataset.loaded === 'true'", "the loaded pipelines")
        page.wait_for(f"document.querySelector('{button}')", "the accept button of public.orders")
        assert "not BACKWARD compatible" in str(page.evaluate("document.getElementById('held').innerText"))
        page.evaluate(f"document.querySelector('{button}').click()")
        page.wait_for(f"!document.querySelector('{button}') && document.body.dataset.loaded === 'true'",
                      "public.orders accepted (its row gone)")
        assert page.evaluate("document.getElementById('error').textContent") == ""
    with psycopg.connect(pipeline.sink_url) as conn:
        assert conn.execute("SELECT user_id FROM orders WHERE id = 3").fetchone() == ("u-7",)
    assert api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]["held_tables"] == []
    (entry, *_) = read_audit(pipeline.config_dir, pipeline.source_id, action="schema_accepted")
    assert entry.actor == "admin"
