"""The retention managers' console: an aiohttp app over Redis and the workers' HTTP.

aiohttp is already installed with Faust (the workers' own web server), so the console adds no web
framework. Pages are one HTML shell rendered by static/console.js from the JSON under /api/; the
server masks msisdns for managers before anything leaves it, and the pages link to a subscriber by
an opaque reference, never by the number.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import html
import io
import logging
import os
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from rules.events import MSISDN_RE, mask
from rules.vocabulary import KINDS
from streams.auth import Authenticator, User
from streams.console import data
from streams.settings import Settings

log = logging.getLogger(__name__)

HERE: Final = Path(__file__).parent
PAGES: Final = ("feed", "calls", "lights", "subscriber", "effect")
COOKIE: Final = "churnlight_session"
USER: Final = web.AppKey("user", User)
CSV_COLUMNS: Final = ("decided_at", "created_at", "task_id", "msisdn", "region", "brand", "channel", "kind",
                      "priority", "light", "previous_light", "status", "reason", "offer", "due_by", "risk")


class Refs:
    """Opaque references to msisdns for links (a manager's page never carries the number)."""

    def __init__(self) -> None:
        self._key = os.urandom(16)
        self._known: dict[str, str] = {}

    def of(self, msisdn: str) -> str:
        ref = hmac.new(self._key, msisdn.encode(), hashlib.sha256).hexdigest()[:20]
        if len(self._known) > 500_000:
            self._known.clear()
        self._known[ref] = msisdn
        return ref

    def msisdn(self, ref: str) -> str | None:
        return self._known.get(ref)


def _shown(row: dict[str, Any], user: User, refs: Refs, tz: Any) -> dict[str, Any]:
    """Return `row` as the user may see it: msisdn masked for managers, a reference for links."""
    out = {k: v for k, v in row.items() if k != "msisdn"}
    out["msisdn"] = row["msisdn"] if user.sees_full_msisdn else mask(row["msisdn"])
    out["ref"] = refs.of(row["msisdn"])
    out["decided_at"] = datetime.fromtimestamp(row["decided_ms"] / 1000, tz).isoformat(timespec="seconds")
    return out


def _filters(request: web.Request) -> dict[str, str]:
    return {name: request.query.get(name, "") for name in data.FILTERS}


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def _login_page(error: str = "", status: int = 401) -> web.Response:
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    body = (HERE / "templates" / "login.html").read_text(encoding="utf-8").replace("{{error}}", message)
    return web.Response(text=body, status=status, content_type="text/html")


@web.middleware
async def _authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    path = request.path
    if path in ("/login", "/health") or path.startswith("/static/"):
        return await handler(request)
    auth: Authenticator = request.app["auth"]
    user = auth.from_session(request.cookies.get(COOKIE)) or auth.header(request.headers.get("Authorization"))
    if user is None:
        if path.startswith("/api/"):
            return _json({"error": "authentication required"}, status=401)
        return _login_page()
    request[USER] = user
    return await handler(request)


async def _login(request: web.Request) -> web.StreamResponse:
    if request.method == "GET":
        return _login_page(status=200)
    form = await request.post()
    auth: Authenticator = request.app["auth"]
    name, password = str(form.get("user", "")), str(form.get("password", ""))
    user = auth.password(name, password) if name else auth.token(password)
    if user is None:
        log.info("console sign-in refused for user %r", name[:40])
        return _login_page("wrong user or password / 用户名或密码错误")
    log.info("console sign-in: %s (%s)", user.name, user.role)
    target = str(form.get("next", "/feed"))
    response = web.HTTPSeeOther(target if target.startswith("/") and not target.startswith("//") else "/feed")
    response.set_cookie(COOKIE, auth.session(user), httponly=True, samesite="Strict", max_age=int(auth.session_ttl_s))
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE)
    raise response


async def _page(request: web.Request) -> web.Response:
    page = request.match_info.get("page") or "feed"
    if page not in PAGES:
        raise web.HTTPNotFound()
    user = request[USER]
    body = (HERE / "templates" / "page.html").read_text(encoding="utf-8")
    for name, value in (("page", page), ("user", user.name), ("role", user.role)):
        body = body.replace("{{" + name + "}}", html.escape(value))
    return web.Response(text=body, content_type="text/html")


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/feed")


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _plotly(request: web.Request) -> web.StreamResponse:
    # plotly.js as the plotly package ships it: served from here, the machine may be offline.
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    return web.FileResponse(path, headers={"Cache-Control": "max-age=86400"})


# -- the API ------------------------------------------------------------------------------------------

async def _me(request: web.Request) -> web.Response:
    user = request[USER]
    return _json({"user": user.name, "role": user.role, "full_msisdn": user.sees_full_msisdn})


async def _options(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    rows = await console.recent({}, limit=5000)
    counts, _ = await console.light_counts()
    regions = sorted({r["region"] for r in rows if r["region"]} | {k[1] for k in counts})
    brands = sorted({r["brand"] for r in rows if r["brand"]} | {k[2] for k in counts})
    return _json({
        "region": regions, "brand": brands, "channel": ["callcentre", "sms"],
        "kind": sorted({r["kind"] for r in rows if r["kind"]} | set(KINDS)),
        "priority": list(data.PRIORITY_RANK),
        "status": ["issued", "suppressed", "queued", "released", "expired"],
    })


async def _feed(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    limit = min(int(request.query.get("limit", "500")), 5000)
    rows = await console.recent(_filters(request), limit=limit)
    user, refs, tz = request[USER], request.app["refs"], console.tz
    return _json({"rows": [_shown(r, user, refs, tz) for r in rows], "last_id": await console.last_id()})


async def _feed_csv(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    rows = await console.recent(_filters(request), limit=data.FEED_CSV_MAX)
    user, refs, tz = request[USER], request.app["refs"], console.tz
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        shown = _shown(row, user, refs, tz)
        writer.writerow(["" if shown.get(c) is None else shown.get(c) for c in CSV_COLUMNS])
    log.info("feed exported as CSV by %s: %d rows", user.name, len(rows))
    stamp = datetime.now(tz).strftime("%Y%m%d-%H%M")
    return web.Response(body=out.getvalue().encode("utf-8-sig"), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="churnlight-feed-{stamp}.csv"'})


async def _feed_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each new feed entry passing the filters, as it is decided."""
    console: data.Console = request.app["console"]
    user, refs, tz = request[USER], request.app["refs"], console.tz
    after = request.query.get("after") or await console.last_id()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")
    # redis-py's default socket timeout (5 s) is shorter than the XREAD's block: the read would
    # time out on every idle stream.
    client = Redis.from_url(request.app["redis_url"], socket_timeout=data.FOLLOW_BLOCK_MS / 1000 + 5)
    try:
        async for row in data.follow(client, after, _filters(request)):
            if row is None:
                await response.write(b": idle\n\n")  # keeps proxies from closing an idle stream
                continue
            payload = orjson.dumps(_shown(row, user, refs, tz))
            await response.write(b"id: " + row["id"].encode() + b"\ndata: " + payload + b"\n\n")
    except ConnectionResetError:
        # The browser left: the next write after it (an entry or the idle line) finds the stream closed.
        log.debug("live feed: %s left", user.name)
    except RedisError as exc:
        # The browser reconnects after the stream's retry time and resumes from its last entry.
        log.warning("live feed: Redis failed (%s); the stream ends", type(exc).__name__)
    finally:
        await client.aclose()
    return response


async def _calls(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    tz = console.tz
    rows = [r for r in await console.all_rows()
            if r["channel"] == "callcentre" and r["status"] in ("issued", "released")]
    asked = request.query.get("day")
    if asked:
        day = date.fromisoformat(asked)
    else:
        days = [d for d in (data.local_day(r["created_at"], tz) for r in rows) if d is not None]
        day = max(days) if days else datetime.now(tz).date()
    infos = await console.task_infos([r["task_id"] for r in rows])
    candidates = data.call_list(rows, infos, {}, day, tz)
    arpus = await console.arpus([r["msisdn"] for r in candidates[:data.CALLS_ASKED_MAX]])
    ranked = data.call_list(rows, infos, arpus, day, tz)
    region = request.query.get("region", "")
    user, refs = request[USER], request.app["refs"]
    regions = sorted({r["region"] for r in ranked})
    shown = [_shown(r, user, refs, tz) for r in ranked if not region or r["region"] == region]
    return _json({"day": day.isoformat(), "regions": regions, "rows": shown})


async def _lights(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    counts, workers = await console.light_counts()
    rows = [{"light": k[0], "region": k[1], "brand": k[2], "count": n} for k, n in sorted(counts.items())]
    moves = data.light_moves(await console.all_rows(), console.tz)
    today = datetime.now(console.tz).date()
    return _json({"counts": rows, "workers": workers, "snapshots": await console.snapshots(), "moves": moves,
                  "snapshot_range": [(today - timedelta(days=29, hours=12)).isoformat(),
                                     (today + timedelta(days=1)).isoformat()]})


async def _subscriber(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    user, refs, tz = request[USER], request.app["refs"], console.tz
    msisdn = refs.msisdn(request.query.get("ref", "")) or request.query.get("msisdn", "").strip()
    if not MSISDN_RE.match(msisdn):
        return _json({"error": "unknown reference or not an msisdn"}, status=404)
    status, doc = await console.subscriber(msisdn)
    tasks = [r for r in await console.all_rows() if r["msisdn"] == msisdn]
    infos = await console.task_infos([r["task_id"] for r in tasks])
    shown_tasks = []
    for row in reversed(tasks):
        info = infos.get(row["task_id"], {})
        outcomes = sorted(k[2:] for k in info if k.startswith("o:"))
        shown_tasks.append({**_shown(row, user, refs, tz), "outcome": info.get("status", ""), "outcomes": outcomes})
    if doc is not None:
        doc = {**doc, "msisdn": msisdn if user.sees_full_msisdn else mask(msisdn)}
    return _json({
        "msisdn": msisdn if user.sees_full_msisdn else mask(msisdn), "ref": refs.of(msisdn),
        "worker_status": status, "worker": doc, "contacts": await console.contacts(msisdn), "tasks": shown_tasks,
    })


async def _effect(request: web.Request) -> web.Response:
    console: data.Console = request.app["console"]
    months = await console.kpi_months()
    month = request.query.get("month") or (months[-1] if months else datetime.now(console.tz).strftime("%Y-%m"))
    kpis = await console.kpis(month)
    counts, _ = await console.light_counts()
    base: dict[str, list[int]] = {}
    for (light, region, _), n in counts.items():
        cell = base.setdefault(region, [0, 0])
        cell[0] += n
        cell[1] += n if light == "black" else 0
    regions = sorted(set(kpis) | set(base))
    rows = []
    for region in regions:
        issued, completed = kpis.get(region, (0, 0))
        watched, black = base.get(region, [0, 0])
        rows.append({"region": region, "issued": issued, "completed": completed,
                     "completion": completed / issued if issued else None, "watched": watched, "black": black,
                     "churn": black / watched if watched else None})
    outcomes = [{"channel": c, "status": s, "count": n} for (c, s), n in sorted((await console.outcome_counts(month)).items())]
    return _json({"month": month, "months": months, "targets": {"completion": data.COMPLETION_TARGET,
                                                                 "churn": data.CHURN_CEILING},
                  "regions": rows, "outcomes": outcomes, "uplift": data.uplift(await console.all_rows())})


def create_console(settings: Settings, auth: Authenticator) -> web.Application:
    """Build the console's aiohttp application for `settings` (Redis resolved)."""
    assert settings.redis is not None, "resolve the embedded Redis before creating the console"
    app = web.Application(middlewares=[_authenticate])
    redis_url = settings.redis.get_secret_value()
    app["auth"] = auth
    app["refs"] = Refs()
    app["redis_url"] = redis_url
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    app["console"] = data.Console(Redis.from_url(redis_url), settings.worker_urls, settings.zone, token=token)

    async def started(app: web.Application) -> None:
        await app["console"].start()

    async def stopped(app: web.Application) -> None:
        await app["console"].close()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    app.router.add_get("/", _root)
    app.router.add_get("/health", _health)
    app.router.add_route("*", "/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/static/plotly.min.js", _plotly)
    app.router.add_static("/static/", HERE / "static")
    app.router.add_get("/api/me", _me)
    app.router.add_get("/api/options", _options)
    app.router.add_get("/api/feed", _feed)
    app.router.add_get("/api/feed.csv", _feed_csv)
    app.router.add_get("/api/feed/events", _feed_events)
    app.router.add_get("/api/calls", _calls)
    app.router.add_get("/api/lights", _lights)
    app.router.add_get("/api/subscriber", _subscriber)
    app.router.add_get("/api/effect", _effect)
    app.router.add_get("/{page}", _page)
    return app


def run_console(settings: Settings) -> None:
    """Serve the console on CHURNLIGHT_BIND:CHURNLIGHT_CONSOLE_PORT until stopped."""
    auth = Authenticator.from_settings(settings.api_token, settings.users_file)
    app = create_console(settings, auth)
    log.info("churnlight console on http://%s:%d, asking workers %s (%r)", settings.bind, settings.console_port,
             ", ".join(settings.worker_urls), auth)
    web.run_app(app, host=settings.bind, port=settings.console_port, print=None, access_log=None,
                shutdown_timeout=1.0)
