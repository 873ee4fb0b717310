"""The console in a real browser (Debian's Chromium driven by Playwright) over a real Redis."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis as redis_lib

from rules.policy import Decision
from rules.tasks import Offer, Reason, Task, task_id
from rules.events import Outcome
from sinks.outcomes import OutcomeStore
from sinks.redis_store import PolicyStore
from streams.auth import write_user
from streams.embedded import free_port, stop_process
from streams.settings import Settings
from tests.conftest import WorkerProc, produce, wait_for
from tests.streams import scripted

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)")

TZ = ZoneInfo("Asia/Shanghai")
LIGHTS = ("green", "yellow", "red", "black")  # the columns of the lights table
PASSWORDS = {"mgr": "manager-password", "sup": "supervisor-password"}


@dataclass
class ConsoleProc:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, user: str | None = None) -> tuple[int, bytes]:
        headers = {}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""


@pytest.fixture
def console(settings: Settings, redis_client: redis_lib.Redis, tmp_path: Path) -> Iterator[ConsoleProc]:
    """A console whose worker list names a port nothing listens on."""
    with _console(settings, tmp_path, f"http://127.0.0.1:{free_port()}") as c:
        yield c


@contextmanager
def _console(settings: Settings, tmp_path: Path, workers: str) -> Iterator[ConsoleProc]:
    users = tmp_path / "users"
    write_user(users, "mgr", "manager", PASSWORDS["mgr"])
    write_user(users, "sup", "supervisor", PASSWORDS["sup"])
    port = free_port()
    env = settings.worker_env()
    env.update({"CHURNLIGHT_USERS_FILE": str(users), "CHURNLIGHT_CONSOLE_PORT": str(port),
                "CHURNLIGHT_WORKERS": workers})
    log = tmp_path / "console.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "console"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    c = ConsoleProc(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 30
        while c.get("/health")[0] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "console did not start"
            time.sleep(0.1)
        yield c
    finally:
        stop_process(proc)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _task(n: int, *, region: str = "zunyi", kind: str = "red_light", day: int = 1) -> Task:
    msisdn = f"1390000{n:04d}"
    created = int(datetime(2026, 9, day, tzinfo=TZ).timestamp() * 1000) + n * 60_000
    channel = "callcentre" if kind in ("red_light", "black_light") else "sms"
    return Task(
        task_id=task_id(msisdn, kind, f"2026-09-{day:02d}"), msisdn=msisdn, channel=channel,  # type: ignore[arg-type]
        kind=kind, priority="high" if kind == "red_light" else "normal",  # type: ignore[arg-type]
        light={"red_light": "red", "black_light": "black"}.get(kind, "yellow"),  # type: ignore[arg-type]
        previous_light="green", reasons=(Reason("arpu_below", 55.5, 120),), offer=Offer("tenure_discount", "voice 90%"),
        region=region, brand="gotone", segment="high", created_at_ms=created, due_by_ms=created + 24 * 3600_000,
        send_after_ms=None, rule_set="cmcc-2010", template=None, vars=None)


def _decide(settings: Settings, *decisions: Decision, outcomes: dict[str, str] | None = None) -> None:
    """Write feed entries, issued tasks and their `outcomes` (task_id -> status) as the worker's sinks do."""

    async def run() -> None:
        assert settings.redis is not None
        store = PolicyStore.from_url(settings.redis.get_secret_value(), tz=TZ)
        results = OutcomeStore(store.client, tz=TZ)
        for decision in decisions:
            assert await store.record_decision(decision)
            if decision.issued:
                await results.record_issued(decision.task)
        for decision in decisions:
            status = (outcomes or {}).get(decision.task.task_id)
            if status is not None:
                task = decision.task
                await results.record_outcome(Outcome(task.task_id, task.msisdn, task.created_at_ms + 3600_000,
                                                     task.channel, status))  # type: ignore[arg-type]
        await store.aclose()

    # Playwright's sync API keeps an event loop in this thread: the store runs in another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _sign_in(browser: Any, console: ConsoleProc, user: str, path: str = "/feed") -> Any:
    page = browser.new_page()
    page.goto(console.url + path)
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready='1']")
    return page


def test_unauthenticated_requests_are_refused(console: ConsoleProc, browser: Any) -> None:
    for path in ("/feed", "/calls", "/api/feed", "/api/feed.csv", "/api/subscriber?msisdn=13900000001"):
        assert console.get(path)[0] == 401, path
    page = browser.new_page()
    response = page.goto(console.url + "/lights")
    assert response.status == 401
    assert page.locator("input[name=password]").is_visible()
    page.fill("input[name=user]", "mgr")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert page.locator(".error").is_visible()
    assert console.get("/api/feed", "mgr")[0] == 200


def test_the_feed_shows_a_decision_within_2_s_and_a_filter_narrows_it(
        console: ConsoleProc, browser: Any, settings: Settings) -> None:
    from playwright.sync_api import expect

    _decide(settings, Decision(_task(1), "issued", None), Decision(_task(2, region="guiyang", kind="yellow_light"),
                                                                    "suppressed", "holdout"))
    page = _sign_in(browser, console, "mgr")
    rows = page.locator("#feed tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#live.on")).to_be_visible()

    # A decision made while the page is open appears within 2 s, on top.
    _decide(settings, Decision(_task(3), "issued", None))
    expect(rows).to_have_count(3, timeout=2000)
    expect(rows.first).to_contain_text("139****0003")

    # Filters narrow the list and the live updates, and the suppressed one says why.
    page.select_option("select[name=status]", "suppressed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("139****0002")
    expect(rows.first).to_contain_text("holdout")
    _decide(settings, Decision(_task(4), "issued", None))  # not suppressed: stays out of the list
    page.select_option("select[name=status]", "")
    page.select_option("select[name=region]", "zunyi")
    expect(rows).to_have_count(3)
    assert "region=zunyi" in page.url

    # The CSV export is the filtered list, masked for a manager.
    status, body = console.get("/api/feed.csv?region=guiyang", "mgr")
    table = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert status == 200 and [r["msisdn"] for r in table] == ["139****0002"]
    assert table[0]["reason"] == "holdout"


def test_a_manager_sees_masked_numbers_and_a_supervisor_full_ones(
        console: ConsoleProc, browser: Any, settings: Settings) -> None:
    from playwright.sync_api import expect

    _decide(settings, Decision(_task(7), "issued", None))
    manager = _sign_in(browser, console, "mgr")
    expect(manager.locator("#feed td.msisdn")).to_have_text("139****0007")
    assert "13900000007" not in manager.content()
    # The subscriber page opened from the feed keeps the number masked, in the page and in its URL.
    manager.click("#feed td.msisdn a")
    manager.wait_for_selector("body[data-ready='1']")
    expect(manager.locator("#sub-msisdn")).to_have_text("139****0007")
    assert "13900000007" not in manager.url and "13900000007" not in manager.content()
    status, body = console.get("/api/feed.csv", "mgr")
    assert b"13900000007" not in body and b"139****0007" in body

    supervisor = _sign_in(browser, console, "sup")
    expect(supervisor.locator("#feed td.msisdn")).to_have_text("13900000007")
    supervisor.click("#feed td.msisdn a")
    supervisor.wait_for_selector("body[data-ready='1']")
    expect(supervisor.locator("#sub-msisdn")).to_have_text("13900000007")


def test_language_switch_and_every_page_renders(console: ConsoleProc, browser: Any, settings: Settings) -> None:
    from playwright.sync_api import expect

    _decide(settings, Decision(_task(1), "issued", None), Decision(_task(2), "suppressed", "holdout"))
    page = _sign_in(browser, console, "sup")
    expect(page.locator("nav a[data-nav=feed]")).to_have_text("Live feed")
    page.click("#lang")
    page.wait_for_selector("body[data-ready='1']")
    expect(page.locator("nav a[data-nav=feed]")).to_have_text("实时动态")
    expect(page.locator("#feed tbody tr").first).to_contain_text("外呼")
    for name, selector in (("calls", "#calls"), ("lights", "#lights"), ("effect", "#uplift"),
                           ("subscriber", "#search")):
        page.goto(f"{console.url}/{name}")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator(".error").count() == 0, (name, page.locator(".error").all_inner_texts())
        expect(page.locator(selector)).to_be_visible()
    page.goto(f"{console.url}/calls")
    # The call list ranks the red-light task of 2026-09-01 (the hold-out one was never issued).
    expect(page.locator("#calls tbody tr")).to_have_count(1)
    expect(page.locator("#calls tbody tr").first).to_contain_text("13900000001")


def test_lights_and_a_subscriber_come_from_the_worker(
        worker: WorkerProc, settings: Settings, redis_client: redis_lib.Redis, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    items = scripted.history(settings.partitions)
    produce(settings, [(topic, value["msisdn"].encode(), orjson.dumps(value)) for topic, value in items])
    worker.start()
    wait_for(lambda: worker.metric("churnlight_events_total") >= len(items), timeout_s=120, what="the history")
    _, summary = worker.get("/lights/summary")
    with _console(settings, tmp_path, worker.url) as console:
        page = _sign_in(browser, console, "sup", "/lights")
        for light, n in summary["totals"].items():
            expect(page.locator(f"#lights tbody tr:last-child th:nth-child({2 + LIGHTS.index(light)})")
                   ).to_have_text(str(n))
        # Both revenue and minutes of the window are drawn, with the rule set's thresholds.
        page.goto(console.url + "/subscriber?msisdn=13900000003")
        page.wait_for_selector("body[data-ready='1']")
        expect(page.locator(".card").first).to_contain_text("red")
        expect(page.locator("#revenue .main-svg").first).to_be_visible()
        expect(page.locator("#revenue")).to_contain_text("threshold 120")
        expect(page.locator("#minutes")).to_contain_text("threshold 100")
        expect(page.locator("#history tbody tr")).to_have_count(3)  # green->yellow, yellow->red, and now


def test_effect_shows_completion_outcomes_and_the_hold_out_comparison(
        console: ConsoleProc, browser: Any, settings: Settings) -> None:
    from playwright.sync_api import expect

    contacted = [Decision(_task(n, kind="yellow_light"), "issued", None) for n in range(1, 5)]
    held_out = [Decision(_task(n, kind="yellow_light"), "suppressed", "holdout") for n in range(5, 7)]
    # Later, one contacted and both held-out subscribers turn black.
    black = [Decision(_task(n, kind="black_light", day=20), "issued", None) for n in (1, 5, 6)]
    outcomes = {d.task.task_id: "delivered" for d in contacted[:2]}
    _decide(settings, *contacted, *held_out, *black, outcomes=outcomes)
    page = _sign_in(browser, console, "mgr", "/effect")
    # 7 tasks issued in zunyi in 2026-09 (4 yellow, 3 black), 2 with a final outcome: 28.6 % < 35 %.
    kpi = page.locator("#kpi tbody tr").first
    expect(kpi).to_contain_text("zunyi")
    expect(kpi.locator("td").nth(1)).to_have_text("7")
    expect(kpi.locator("td").nth(2)).to_have_text("2")
    expect(kpi.locator("td").nth(3)).to_contain_text("28.6 %")
    expect(kpi.locator("td").nth(3).locator(".fail")).to_be_visible()
    expect(page.locator("#outcomes tbody tr", has_text="delivered").locator("td").last).to_have_text("2")
    # Yellow over SMS: contacted 4, 1 churned (25.0 %); hold-out 2, 2 churned (100.0 %).
    row = page.locator("#uplift tbody tr").first
    expect(row.locator("td")).to_have_text(["yellow", "sms", "4", "1", "25.0 %", "2", "2", "100.0 %", "75.0 pp"])


def _followers(client: redis_lib.Redis) -> int:
    """Count the Redis connections of the console's db that wait in XREAD (one per open feed page)."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return sum(1 for c in client.client_list() if int(c["db"]) == db and c["cmd"] == "xread")


def test_a_browser_leaving_the_live_feed_logs_no_error(
        console: ConsoleProc, browser: Any, redis_client: redis_lib.Redis) -> None:
    page = _sign_in(browser, console, "mgr", "/feed")
    wait_for(lambda: _followers(redis_client) == 1, what="the page's event stream")
    page.close()  # the browser leaves while the console waits in XREAD for the next entry
    wait_for(lambda: _followers(redis_client) == 0, what="the console to let the stream go")
    text = console.log.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text
