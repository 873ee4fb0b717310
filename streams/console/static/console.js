/* churnlight console: renders each page from the JSON under /api/ (msisdns arrive masked for managers). */
"use strict";

const I18N = {
  en: {
    "nav.feed": "Live feed", "nav.calls": "Call list", "nav.lights": "Lights", "nav.subscriber": "Subscriber",
    "nav.effect": "Effect", "logout": "Sign out", "role.manager": "manager", "role.supervisor": "supervisor",
    "feed.title": "Live feed: task decisions, newest first", "feed.live": "live", "feed.offline": "reconnecting",
    "feed.rows": "rows shown", "feed.csv": "Export CSV", "feed.none": "No task decisions match.",
    "filter.all": "all", "f.region": "Region", "f.brand": "Brand", "f.channel": "Channel", "f.kind": "Kind",
    "f.priority": "Priority", "f.status": "Status",
    "c.decided": "Decided", "c.created": "Event time", "c.msisdn": "MSISDN", "c.region": "Region", "c.brand": "Brand",
    "c.channel": "Channel", "c.kind": "Kind", "c.priority": "Priority", "c.light": "Light", "c.status": "Status",
    "c.reason": "Suppressed because", "c.offer": "Offer", "c.due": "Due by", "c.reasons": "Reasons", "c.risk": "Risk",
    "c.arpu": "30-day ARPU (CNY)", "c.saved": "Expected saved (CNY)", "c.rank": "#", "c.outcome": "Outcome",
    "c.count": "Subscribers", "c.total": "Total",
    "calls.title": "Today's call list", "calls.day": "Day", "calls.none": "No call-centre task is open on this day.",
    "calls.note": "Open call-centre tasks of the day (issued, not past due, no final outcome). Scored tasks first, by expected saved revenue = risk × 30-day ARPU; then by priority and ARPU.",
    "lights.title": "Lights over all workers", "lights.byregion": "Watched subscribers by region and light",
    "lights.table": "Light × region × brand", "lights.snapshots": "Watched base by light, daily snapshots (last 30 days)",
    "lights.moves": "Subscribers turning yellow, red or black per day (task decisions, last 30 days of event time)",
    "lights.workers": "Workers asked", "lights.day": "Day", "lights.subs": "Subscribers", "lights.region": "Region",
    "lights.changes": "Light changes",
    "sub.title": "Subscriber", "sub.unwatched": "not watched", "sub.search": "MSISDN", "sub.open": "Open", "sub.unknown": "No worker knows this subscriber.",
    "sub.window": "30-day window", "sub.revenue": "Revenue in the window (CNY)", "sub.mou": "Outgoing minutes in the window (min)",
    "sub.daily_rev": "revenue per day", "sub.cum_rev": "running total", "sub.threshold": "threshold",
    "sub.photo": "photo value", "sub.decline": "decline line (photo × ratio)", "sub.daily_mou": "minutes per day",
    "sub.day": "Day", "sub.cny": "CNY", "sub.min": "minutes", "sub.light": "Light", "sub.since": "since",
    "sub.arpu": "ARPU (30 days)", "sub.mouv": "MOU (30 days)", "sub.contract": "Contract", "sub.none": "none",
    "sub.history": "Light history (from task decisions)", "sub.contacts": "Last contacts", "sub.tasks": "Tasks and outcomes",
    "sub.segment": "Segment", "sub.balance": "Prepaid balance", "sub.portout": "Port-out request open",
    "sub.churned": "Churned", "sub.noref": "Open a subscriber from the feed or the call list, or enter a number.",
    "sub.from": "from", "sub.to": "to", "sub.channel": "Channel", "sub.at": "Last contact", "yes": "yes", "no": "no",
    "effect.title": "Effect of the retention work", "effect.month": "Month", "effect.kpi": "KPIs per region (seed 004)",
    "effect.issued": "Tasks issued", "effect.completed": "With a final outcome", "effect.completion": "Completion (target ≥ 35 %)",
    "effect.watched": "Watched base", "effect.black": "Black", "effect.churn": "Churn (ceiling ≤ 7.5 %)",
    "effect.outcomes": "Tasks issued in the month, by latest outcome", "effect.uplift": "Churn of contacted subscribers against the hold-out group",
    "effect.upnote": "Group = first yellow or red light task: issued (contacted) or suppressed by the hold-out; churned = a later black light in the feed.",
    "effect.contacted": "Contacted", "effect.holdout": "Hold-out", "effect.churned": "churned", "effect.rate": "churn rate",
    "effect.diff": "Hold-out − contacted", "effect.percent": "percent", "effect.target": "target", "effect.ceiling": "ceiling",
    "effect.none": "No data yet.", "effect.tasks": "tasks", "effect.status": "Outcome status",
  },
  zh: {
    "nav.feed": "实时动态", "nav.calls": "外呼清单", "nav.lights": "亮灯", "nav.subscriber": "用户详情",
    "nav.effect": "维系成效", "logout": "退出", "role.manager": "维系经理", "role.supervisor": "主管",
    "feed.title": "实时动态：任务决策（最新在前）", "feed.live": "实时", "feed.offline": "重新连接中",
    "feed.rows": "条显示", "feed.csv": "导出 CSV", "feed.none": "没有符合条件的任务决策。",
    "filter.all": "全部", "f.region": "地市", "f.brand": "品牌", "f.channel": "渠道", "f.kind": "类型",
    "f.priority": "优先级", "f.status": "状态",
    "c.decided": "决策时间", "c.created": "事件时间", "c.msisdn": "号码", "c.region": "地市", "c.brand": "品牌",
    "c.channel": "渠道", "c.kind": "类型", "c.priority": "优先级", "c.light": "灯色", "c.status": "状态",
    "c.reason": "抑制原因", "c.offer": "优惠", "c.due": "截止时间", "c.reasons": "原因", "c.risk": "风险",
    "c.arpu": "30 天 ARPU（元）", "c.saved": "预计挽回收入（元）", "c.rank": "序号", "c.outcome": "结果",
    "c.count": "用户数", "c.total": "合计",
    "calls.title": "今日外呼清单", "calls.day": "日期", "calls.none": "当天没有待处理的外呼任务。",
    "calls.note": "当天待处理的外呼任务（已下发、未过期、无最终结果）。有风险评分的任务在前，按预计挽回收入 = 风险 × 30 天 ARPU 排序；其余按优先级和 ARPU 排序。",
    "lights.title": "全部 worker 的亮灯情况", "lights.byregion": "各地市被监控用户的灯色分布",
    "lights.table": "灯色 × 地市 × 品牌", "lights.snapshots": "被监控用户灯色每日快照（近 30 天）",
    "lights.moves": "每日转为黄灯、红灯或黑灯的用户（任务决策，事件时间近 30 天）",
    "lights.workers": "已查询的 worker", "lights.day": "日期", "lights.subs": "用户数", "lights.region": "地市",
    "lights.changes": "亮灯变化数",
    "sub.title": "用户详情", "sub.unwatched": "未监控", "sub.search": "号码", "sub.open": "查询", "sub.unknown": "没有 worker 认识该用户。",
    "sub.window": "30 天窗口", "sub.revenue": "窗口内收入（元）", "sub.mou": "窗口内主叫分钟（分钟）",
    "sub.daily_rev": "每日收入", "sub.cum_rev": "累计", "sub.threshold": "门限",
    "sub.photo": "拍照值", "sub.decline": "下降线（拍照值 × 比例）", "sub.daily_mou": "每日分钟",
    "sub.day": "日期", "sub.cny": "元", "sub.min": "分钟", "sub.light": "灯色", "sub.since": "起始",
    "sub.arpu": "ARPU（30 天）", "sub.mouv": "MOU（30 天）", "sub.contract": "合约", "sub.none": "无",
    "sub.history": "亮灯历史（来自任务决策）", "sub.contacts": "最近接触", "sub.tasks": "任务与结果",
    "sub.segment": "价值分层", "sub.balance": "预付费余额", "sub.portout": "携号转网申请中",
    "sub.churned": "已流失", "sub.noref": "请从实时动态或外呼清单打开用户，或输入号码。",
    "sub.from": "从", "sub.to": "到", "sub.channel": "渠道", "sub.at": "最近接触时间", "yes": "是", "no": "否",
    "effect.title": "维系工作成效", "effect.month": "月份", "effect.kpi": "各地市考核指标（种子 004）",
    "effect.issued": "下发任务数", "effect.completed": "有最终结果", "effect.completion": "任务完成率（目标 ≥ 35 %）",
    "effect.watched": "监控用户数", "effect.black": "黑灯", "effect.churn": "流失率（上限 ≤ 7.5 %）",
    "effect.outcomes": "该月下发任务的最新结果", "effect.uplift": "接触用户与对照组（hold-out）的流失对比",
    "effect.upnote": "分组 = 第一次黄灯或红灯任务：已下发（接触组）或被对照组抑制；流失 = 之后在动态中出现黑灯。",
    "effect.contacted": "接触组", "effect.holdout": "对照组", "effect.churned": "流失", "effect.rate": "流失率",
    "effect.diff": "对照组 − 接触组", "effect.percent": "百分比", "effect.target": "目标", "effect.ceiling": "上限",
    "effect.none": "暂无数据。", "effect.tasks": "任务数", "effect.status": "结果状态",
  },
};
const VALUES = {
  zh: {
    green: "绿灯", yellow: "黄灯", red: "红灯", black: "黑灯", callcentre: "外呼", sms: "短信",
    issued: "已下发", suppressed: "已抑制", queued: "排队中", released: "已释放", expired: "已过期",
    urgent: "紧急", high: "高", normal: "普通", low: "低",
    red_light: "红灯维系", yellow_light: "黄灯关怀", black_light: "黑灯策反", contract_expiry: "合约到期",
    balance_low: "余额不足", birthday: "生日关怀", vas_trial: "增值业务试用到期", risk: "风险预警", port_out: "携转挽留",
    holdout: "对照组", cooldown: "冷却期", opt_out: "退订短信", dnc: "免打扰", port_out_guard: "携转保护", capacity: "超出外呼能力",
    reached: "已接通", accepted: "已接受", declined: "已拒绝", unreachable: "无法接通", delivered: "已送达", failed: "发送失败", none: "无结果",
    arpu_below: "ARPU 低于门限", mou_below: "MOU 低于门限", arpu_decline: "ARPU 大幅下降", mou_decline: "MOU 大幅下降",
    port_out_request: "携转申请", deactivated: "销户", ported_out: "已携出", churned: "已流失",
    balance_below: "余额低于门限", contract_days_left: "合约剩余天数", contract_ends_this_month: "合约本月到期",
    contract_spend: "合约消费已达承诺", vas_trial_ending: "试用即将到期",
    remaining_match: "剩多少送多少", deposit_match: "存多少送多少", overspend_match: "超多少送多少", tenure_discount: "网龄折扣",
  },
  en: { none: "no outcome" },
};

let lang = localStorage.getItem("churnlight.lang") || ((navigator.language || "").startsWith("zh") ? "zh" : "en");
const t = (key) => (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
const v = (value) => (value == null || value === "" ? "" : (VALUES[lang][value] || String(value)));
const page = document.body.dataset.page;
const app = document.getElementById("app");

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function applyLabels() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-t]").forEach((el) => { el.textContent = t(el.dataset.t); });
  document.getElementById("lang").textContent = lang === "zh" ? "English" : "中文";
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
}
document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem("churnlight.lang", lang);
  location.reload();
});

async function api(path) {
  const resp = await fetch(path, { credentials: "same-origin" });
  if (resp.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  if (!resp.ok && resp.status !== 404) throw new Error(path + ": " + resp.status);
  return resp.json();
}
const fmtTime = (iso) => (iso ? iso.replace("T", " ").slice(0, 16) : "");
const num = (x, d = 0) => (x == null ? "–" : Number(x).toLocaleString(lang === "zh" ? "zh-CN" : "en", { minimumFractionDigits: d, maximumFractionDigits: d }));
const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + " %");
const light = (l) => (l ? `<span class="light ${esc(l)}"></span>${esc(v(l))}` : "");
const subLink = (row) => `<a href="/subscriber?ref=${esc(row.ref)}">${esc(row.msisdn)}</a>`;
const COLOURS = { green: "#2e9e44", yellow: "#e0b000", red: "#d0342c", black: "#222222" };
const LIGHTS = ["green", "yellow", "red", "black"];

/* Plotly with the console's conventions: axes from zero, ticks outside, units in the titles. */
function chart(el, traces, layout) {
  const base = {
    margin: { l: 70, r: 30, t: 50, b: 100 }, font: { family: "system-ui, 'Noto Sans CJK SC', sans-serif", size: 12 },
    legend: { orientation: "h", y: -0.3, yanchor: "top", traceorder: "normal" }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  };
  const axis = (a) => Object.assign({ rangemode: "tozero", ticks: "outside", showline: true, linecolor: "#999", gridcolor: "#eee", zeroline: true }, a);
  const merged = Object.assign(base, layout);
  merged.xaxis = axis(Object.assign({ rangemode: "normal" }, layout.xaxis || {}));
  merged.yaxis = axis(layout.yaxis || {});
  if (layout.counts) {
    // Counts are whole numbers: no 0.5 ticks on a small chart.
    const top = Math.max(0, ...traces.flatMap((tr) => (tr.y || []).filter((y) => y != null)));
    if (top <= 8) Object.assign(merged.yaxis, { dtick: 1, tick0: 0, range: [0, Math.max(top, 1) * 1.1] });
    merged.yaxis.tickformat = ",d";
    delete merged.counts;
  }
  Plotly.newPlot(el, traces, merged, { displaylogo: false, responsive: true, locale: lang === "zh" ? "zh-CN" : "en" });
}
function loadPlotly() {
  return new Promise((resolve) => {
    if (window.Plotly) return resolve();
    const s = document.createElement("script");
    s.src = "/static/plotly.min.js";
    s.onload = resolve;
    document.head.appendChild(s);
  });
}

/* ---- Live feed ------------------------------------------------------------------------------- */
const FILTERS = ["region", "brand", "channel", "kind", "priority", "status"];
const FEED_COLUMNS = ["c.decided", "c.created", "c.msisdn", "c.region", "c.brand", "c.channel", "c.kind", "c.priority", "c.light", "c.status", "c.reason", "c.offer", "c.due"];
function feedRow(r, fresh) {
  return `<tr class="${fresh ? "new" : ""}" data-kind="${esc(r.kind)}" data-region="${esc(r.region)}">
    <td>${esc(fmtTime(r.decided_at))}</td><td>${esc(fmtTime(r.created_at))}</td><td class="msisdn">${subLink(r)}</td>
    <td>${esc(r.region)}</td><td>${esc(r.brand)}</td><td>${esc(v(r.channel))}</td><td>${esc(v(r.kind))}</td>
    <td>${esc(v(r.priority))}</td><td>${light(r.light)}</td><td class="status-${esc(r.status)}">${esc(v(r.status))}</td>
    <td>${esc(v(r.reason))}</td><td>${esc(v(r.offer))}</td><td>${esc(fmtTime(r.due_by))}</td></tr>`;
}
async function feedPage() {
  const params = new URLSearchParams(location.search);
  const options = await api("/api/options");
  const selects = FILTERS.map((f) => `<label>${t("f." + f)}<select name="${f}"><option value="">${t("filter.all")}</option>${
    options[f].map((o) => `<option value="${esc(o)}"${params.get(f) === o ? " selected" : ""}>${esc(v(o) || o)}</option>`).join("")}</select></label>`).join("");
  app.innerHTML = `<h1>${t("feed.title")}</h1>
    <form class="bar" id="filters">${selects}<a class="button" id="csv" href="#">${t("feed.csv")}</a>
    <span><span class="live" id="live"></span><span id="livetext">${t("feed.offline")}</span> · <span id="count">0</span> ${t("feed.rows")}</span></form>
    <div class="scroll"><table id="feed"><thead><tr>${FEED_COLUMNS.map((c) => `<th>${t(c)}</th>`).join("")}</tr></thead><tbody></tbody></table></div>
    <p id="empty" class="muted" hidden>${t("feed.none")}</p>`;
  const form = document.getElementById("filters");
  let source = null;
  async function load() {
    const q = new URLSearchParams();
    FILTERS.forEach((f) => { const x = form.elements[f].value; if (x) q.set(f, x); });
    history.replaceState(null, "", "/feed" + (q.toString() ? "?" + q : ""));
    document.getElementById("csv").href = "/api/feed.csv?" + q;
    const doc = await api("/api/feed?" + q);
    const body = document.querySelector("#feed tbody");
    body.innerHTML = doc.rows.map((r) => feedRow(r, false)).join("");
    document.getElementById("count").textContent = doc.rows.length;
    document.getElementById("empty").hidden = doc.rows.length > 0;
    if (source) source.close();
    q.set("after", doc.last_id);
    source = new EventSource("/api/feed/events?" + q);
    source.onopen = () => { document.getElementById("live").classList.add("on"); document.getElementById("livetext").textContent = t("feed.live"); };
    source.onerror = () => { document.getElementById("live").classList.remove("on"); document.getElementById("livetext").textContent = t("feed.offline"); };
    source.onmessage = (ev) => {
      const r = JSON.parse(ev.data);
      body.insertAdjacentHTML("afterbegin", feedRow(r, true));
      while (body.rows.length > 2000) body.deleteRow(-1);
      document.getElementById("count").textContent = body.rows.length;
      document.getElementById("empty").hidden = true;
    };
  }
  form.addEventListener("change", load);
  await load();
}

/* ---- Call list ------------------------------------------------------------------------------- */
async function callsPage() {
  const params = new URLSearchParams(location.search);
  const doc = await api("/api/calls?" + params);
  const region = params.get("region") || "";
  const tabs = [""].concat(doc.regions).map((r) => `<option value="${esc(r)}"${r === region ? " selected" : ""}>${esc(r || t("filter.all"))}</option>`).join("");
  const rows = doc.rows.map((r, i) => `<tr><td class="num">${i + 1}</td><td class="msisdn">${subLink(r)}</td><td>${esc(r.region)}</td><td>${esc(r.brand)}</td>
    <td>${esc(v(r.kind))}</td><td>${esc(v(r.priority))}</td><td>${light(r.light)}</td><td class="num">${r.risk == null ? "–" : num(r.risk, 2)}</td>
    <td class="num">${num(r.arpu, 2)}</td><td class="num">${num(r.saved, 2)}</td><td class="wrap">${esc(v(r.offer))} <span class="muted">${esc(r.offer_detail)}</span></td>
    <td class="wrap">${r.reasons.map((c) => `<span class="pill">${esc(v(c))}</span>`).join("")}</td><td>${esc(fmtTime(r.due_by))}</td><td>${esc(v(r.outcome))}</td></tr>`).join("");
  app.innerHTML = `<h1>${t("calls.title")}</h1>
    <form class="bar" id="pick"><label>${t("calls.day")}<input type="date" name="day" value="${esc(doc.day)}"></label>
    <label>${t("f.region")}<select name="region">${tabs}</select></label></form>
    <p class="muted">${t("calls.note")}</p>
    ${doc.rows.length ? `<div class="scroll"><table id="calls"><thead><tr>${["c.rank", "c.msisdn", "c.region", "c.brand", "c.kind", "c.priority", "c.light", "c.risk", "c.arpu", "c.saved", "c.offer", "c.reasons", "c.due", "c.outcome"].map((c) => `<th>${t(c)}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table></div>` : `<p class="muted">${t("calls.none")}</p>`}`;
  document.getElementById("pick").addEventListener("change", (e) => {
    const q = new URLSearchParams(new FormData(e.currentTarget));
    location.search = q.toString();
  });
}

/* ---- Lights ---------------------------------------------------------------------------------- */
async function lightsPage() {
  const [doc] = await Promise.all([api("/api/lights"), loadPlotly()]);
  const regions = [...new Set(doc.counts.map((c) => c.region))].sort();
  const pivot = {};
  doc.counts.forEach((c) => { const k = c.region + "|" + c.brand; (pivot[k] = pivot[k] || {})[c.light] = c.count; });
  const totals = {};
  const rows = Object.keys(pivot).sort().map((k) => {
    const [region, brand] = k.split("|");
    const cells = LIGHTS.map((l) => { totals[l] = (totals[l] || 0) + (pivot[k][l] || 0); return `<td class="num">${num(pivot[k][l] || 0)}</td>`; }).join("");
    const sum = LIGHTS.reduce((s, l) => s + (pivot[k][l] || 0), 0);
    return `<tr><td>${esc(region)}</td><td>${esc(brand)}</td>${cells}<td class="num">${num(sum)}</td></tr>`;
  }).join("");
  const grand = LIGHTS.reduce((s, l) => s + (totals[l] || 0), 0);
  app.innerHTML = `<h1>${t("lights.title")}</h1>
    <div class="cards">${LIGHTS.map((l) => `<div class="card"><div class="label">${light(l)}</div><div class="value">${num(totals[l] || 0)}</div></div>`).join("")}</div>
    <div id="byregion" class="chart"></div>
    <div class="grid2"><div id="snapshots" class="chart"></div><div id="moves" class="chart"></div></div>
    <h2>${t("lights.table")}</h2>
    <table id="lights"><thead><tr><th>${t("c.region")}</th><th>${t("c.brand")}</th>${LIGHTS.map((l) => `<th class="num">${light(l)}</th>`).join("")}<th class="num">${t("c.total")}</th></tr></thead>
    <tbody>${rows}<tr><th colspan="2">${t("c.total")}</th>${LIGHTS.map((l) => `<th class="num">${num(totals[l] || 0)}</th>`).join("")}<th class="num">${num(grand)}</th></tr></tbody></table>
    <p class="muted">${t("lights.workers")}: ${doc.workers.map((w) => `${esc(w.url)} ${w.ok ? "✓" : "✗"}`).join(", ")}</p>`;
  chart("byregion", LIGHTS.map((l) => ({
    type: "bar", name: v(l), marker: { color: COLOURS[l] }, x: regions,
    y: regions.map((r) => doc.counts.filter((c) => c.region === r && c.light === l).reduce((s, c) => s + c.count, 0)),
  })), { title: { text: t("lights.byregion") }, barmode: "stack", counts: true, xaxis: { title: { text: t("lights.region") } }, yaxis: { title: { text: t("lights.subs") } } });
  const sDays = Object.keys(doc.snapshots).sort();
  chart("snapshots", LIGHTS.map((l) => ({
    type: "scatter", mode: "lines+markers", name: v(l), line: { color: COLOURS[l] }, x: sDays, y: sDays.map((d) => doc.snapshots[d][l] || 0),
  })), { title: { text: t("lights.snapshots"), font: { size: 13 } }, counts: true, xaxis: { title: { text: t("lights.day") }, type: "date", range: doc.snapshot_range, tickformat: "%m-%d" }, yaxis: { title: { text: t("lights.subs") } } });
  const mDays = Object.keys(doc.moves).sort();
  chart("moves", ["yellow", "red", "black"].map((l) => ({
    type: "bar", name: v(l), marker: { color: COLOURS[l] }, x: mDays, y: mDays.map((d) => doc.moves[d][l] || 0),
  })), { title: { text: t("lights.moves"), font: { size: 13 } }, barmode: "stack", counts: true, xaxis: { title: { text: t("lights.day") }, type: "date" }, yaxis: { title: { text: t("lights.changes") } } });
}

/* ---- Subscriber ------------------------------------------------------------------------------ */
async function subscriberPage() {
  const params = new URLSearchParams(location.search);
  const search = `<form class="bar" id="search" action="/subscriber"><label>${t("sub.search")}<input name="msisdn" value="" placeholder="13800000000"></label><button type="submit">${t("sub.open")}</button></form>`;
  if (!params.get("ref") && !params.get("msisdn")) {
    app.innerHTML = `<h1>${t("sub.title")}</h1>${search}<p class="muted">${t("sub.noref")}</p>`;
    return;
  }
  const [doc] = await Promise.all([api("/api/subscriber?" + params), loadPlotly()]);
  if (doc.error) { app.innerHTML = `<h1>${t("sub.title")}</h1>${search}<p class="error">${esc(doc.error)}</p>`; return; }
  const w = doc.worker;
  const card = (label, value) => `<div class="card"><div class="label">${label}</div><div class="value">${value}</div></div>`;
  let head = `<h1>${t("sub.title")} <span id="sub-msisdn">${esc(doc.msisdn)}</span></h1>${search}`;
  if (!w) {
    head += `<p class="muted">${t("sub.unknown")}</p>`;
  } else {
    const c = w.contract;
    head += `<div class="cards">
      ${card(t("sub.light"), w.light ? `${light(w.light)}<div class="label">${t("sub.since")} ${esc(fmtTime(w.light_since))}</div>` : `<span class="muted">${t("sub.unwatched")}</span>`)}
      ${card(t("sub.arpu"), num(w.arpu, 2) + " " + t("sub.cny"))}${card(t("sub.mouv"), num(w.mou, 0) + " " + t("sub.min"))}
      ${card(t("c.region") + " / " + t("c.brand"), esc(w.region) + " / " + esc(w.brand))}${card(t("sub.segment"), esc(w.segment || "–"))}
      ${card(t("sub.contract"), c ? `${esc(c.ends_on)}<div class="label">${num(c.spent, 2)} / ${num(c.committed, 2)} ${t("sub.cny")}</div>` : t("sub.none"))}
      ${w.prepaid ? card(t("sub.balance"), num(w.balance, 2) + " " + t("sub.cny")) : ""}
      ${card(t("sub.portout"), w.port_out_request_open ? t("yes") : t("no"))}${card(t("sub.churned"), w.churned ? esc(w.churned) : t("no"))}
      ${card(t("c.reasons"), (w.reasons || []).map((r) => `<span class="pill">${esc(v(r.code))} ${esc(r.value)} / ${esc(r.threshold)}</span>`).join("") || "–")}
      ${w.risk != null ? card(t("c.risk"), num(w.risk, 2)) : ""}</div>
      <div class="grid2"><div id="revenue" class="chart"></div><div id="minutes" class="chart"></div></div>`;
  }
  const history = doc.tasks.filter((r) => r.light && r.kind.endsWith("_light")).slice().reverse();
  head += `<h2>${t("sub.history")}</h2><table id="history"><thead><tr><th>${t("c.created")}</th><th>${t("sub.from")}</th><th>${t("sub.to")}</th><th>${t("c.reasons")}</th><th>${t("c.kind")}</th></tr></thead><tbody>${
    history.map((r) => `<tr><td>${esc(fmtTime(r.created_at))}</td><td>${light(r.previous_light || "green")}</td><td>${light(r.light)}</td><td class="wrap">${(r.reason_values || []).map((x) => `<span class="pill">${esc(v(x.code))} ${esc(x.value)} / ${esc(x.threshold)}</span>`).join("")}</td><td>${esc(v(r.kind))}</td></tr>`).join("")}
    ${w && w.light ? `<tr><td>${esc(fmtTime(w.light_since))}</td><td></td><td>${light(w.light)}</td><td class="wrap">${(w.reasons || []).map((x) => `<span class="pill">${esc(v(x.code))}</span>`).join("")}</td><td class="muted">now</td></tr>` : ""}</tbody></table>
    <h2>${t("sub.contacts")}</h2><table id="contacts"><thead><tr><th>${t("sub.channel")}</th><th>${t("sub.at")}</th></tr></thead><tbody>${
    Object.entries(doc.contacts).map(([ch, at]) => `<tr><td>${esc(v(ch))}</td><td>${esc(fmtTime(at))}</td></tr>`).join("") || `<tr><td colspan="2" class="muted">${t("sub.none")}</td></tr>`}</tbody></table>
    <h2>${t("sub.tasks")}</h2><table id="tasks"><thead><tr>${["c.created", "c.channel", "c.kind", "c.priority", "c.status", "c.reason", "c.offer", "c.due", "c.outcome"].map((c) => `<th>${t(c)}</th>`).join("")}</tr></thead><tbody>${
    doc.tasks.map((r) => `<tr><td>${esc(fmtTime(r.created_at))}</td><td>${esc(v(r.channel))}</td><td>${esc(v(r.kind))}</td><td>${esc(v(r.priority))}</td><td class="status-${esc(r.status)}">${esc(v(r.status))}</td><td>${esc(v(r.reason))}</td><td>${esc(v(r.offer))}</td><td>${esc(fmtTime(r.due_by))}</td><td>${(r.outcomes || []).map((o) => esc(v(o))).join(", ")}</td></tr>`).join("")}</tbody></table>`;
  app.innerHTML = head;
  document.querySelector("#search input").value = params.get("msisdn") || "";
  if (!w || !w.days || !w.days.length) return;
  const days = w.days.map((d) => d.day);
  const running = (key) => { let s = 0; return w.days.map((d) => (s += d[key])); };
  const flat = (y, name, colour, dash) => ({ type: "scatter", mode: "lines", name, x: [days[0], days[days.length - 1]], y: [y, y], line: { color: colour, dash } });
  const th = w.thresholds || {};
  const rev = [{ type: "bar", name: t("sub.daily_rev"), x: days, y: w.days.map((d) => d.revenue), marker: { color: "#8fb3d9" } },
    { type: "scatter", mode: "lines", name: t("sub.cum_rev"), x: days, y: running("revenue"), line: { color: "#1d3557", width: 3 } }];
  if (th.arpu_min != null) rev.push(flat(th.arpu_min, `${t("sub.threshold")} ${th.arpu_min}`, "#d0342c", "dash"));
  if (w.photo) { rev.push(flat(w.photo.arpu, `${t("sub.photo")} ${w.photo.arpu}`, "#2e9e44", "dot"));
    if (th.decline_ratio) rev.push(flat(w.photo.arpu * th.decline_ratio, t("sub.decline"), "#e0b000", "dashdot")); }
  chart("revenue", rev, { title: { text: t("sub.revenue") }, xaxis: { title: { text: t("sub.day") }, type: "date" }, yaxis: { title: { text: t("sub.cny") } } });
  const mou = [{ type: "bar", name: t("sub.daily_mou"), x: days, y: w.days.map((d) => d.mou), marker: { color: "#c5a8dc" } },
    { type: "scatter", mode: "lines", name: t("sub.cum_rev"), x: days, y: running("mou"), line: { color: "#5b2a86", width: 3 } }];
  if (th.mou_min != null) mou.push(flat(th.mou_min, `${t("sub.threshold")} ${th.mou_min}`, "#d0342c", "dash"));
  if (w.photo) { mou.push(flat(w.photo.mou, `${t("sub.photo")} ${w.photo.mou}`, "#2e9e44", "dot"));
    if (th.decline_ratio) mou.push(flat(w.photo.mou * th.decline_ratio, t("sub.decline"), "#e0b000", "dashdot")); }
  chart("minutes", mou, { title: { text: t("sub.mou") }, xaxis: { title: { text: t("sub.day") }, type: "date" }, yaxis: { title: { text: t("sub.min") } } });
}

/* ---- Effect ---------------------------------------------------------------------------------- */
async function effectPage() {
  const params = new URLSearchParams(location.search);
  const [doc] = await Promise.all([api("/api/effect?" + params), loadPlotly()]);
  const mark = (x, ok) => (x == null ? "–" : `<span class="${ok ? "ok" : "fail"}">${pct(x)} ${ok ? "✓" : "✗"}</span>`);
  const kpiRows = doc.regions.map((r) => `<tr><td>${esc(r.region)}</td><td class="num">${num(r.issued)}</td><td class="num">${num(r.completed)}</td>
    <td class="num">${mark(r.completion, r.completion >= doc.targets.completion)}</td><td class="num">${num(r.watched)}</td><td class="num">${num(r.black)}</td>
    <td class="num">${mark(r.churn, r.churn <= doc.targets.churn)}</td></tr>`).join("");
  const upRows = doc.uplift.map((u) => `<tr><td>${light(u.light)}</td><td>${esc(v(u.channel))}</td>
    <td class="num">${num(u.contacted)}</td><td class="num">${num(u.contacted_churned)}</td><td class="num">${pct(u.contacted_rate)}</td>
    <td class="num">${num(u.holdout)}</td><td class="num">${num(u.holdout_churned)}</td><td class="num">${pct(u.holdout_rate)}</td>
    <td class="num">${u.uplift == null ? "–" : (100 * u.uplift).toFixed(1) + " pp"}</td></tr>`).join("");
  const months = doc.months.map((m) => `<option${m === doc.month ? " selected" : ""}>${esc(m)}</option>`).join("");
  app.innerHTML = `<h1>${t("effect.title")}</h1>
    <form class="bar" id="pick"><label>${t("effect.month")}<select name="month">${months || `<option>${esc(doc.month)}</option>`}</select></label></form>
    <h2>${t("effect.kpi")}</h2>
    <table id="kpi"><thead><tr><th>${t("c.region")}</th><th class="num">${t("effect.issued")}</th><th class="num">${t("effect.completed")}</th><th class="num">${t("effect.completion")}</th>
    <th class="num">${t("effect.watched")}</th><th class="num">${t("effect.black")}</th><th class="num">${t("effect.churn")}</th></tr></thead><tbody>${kpiRows}</tbody></table>
    <div id="kpichart" class="chart"></div>
    <div class="grid2"><div><h2>${t("effect.outcomes")}</h2><table id="outcomes"><thead><tr><th>${t("c.channel")}</th><th>${t("effect.status")}</th><th class="num">${t("effect.tasks")}</th></tr></thead><tbody>${
      doc.outcomes.map((o) => `<tr><td>${esc(v(o.channel))}</td><td>${esc(v(o.status))}</td><td class="num">${num(o.count)}</td></tr>`).join("") || `<tr><td colspan="3" class="muted">${t("effect.none")}</td></tr>`}</tbody></table></div>
    <div id="outchart" class="chart"></div></div>
    <h2>${t("effect.uplift")}</h2><p class="muted">${t("effect.upnote")}</p>
    <table id="uplift"><thead><tr><th>${t("c.light")}</th><th>${t("c.channel")}</th><th class="num">${t("effect.contacted")}</th><th class="num">${t("effect.churned")}</th><th class="num">${t("effect.rate")}</th>
    <th class="num">${t("effect.holdout")}</th><th class="num">${t("effect.churned")}</th><th class="num">${t("effect.rate")}</th><th class="num">${t("effect.diff")}</th></tr></thead><tbody>${upRows || `<tr><td colspan="9" class="muted">${t("effect.none")}</td></tr>`}</tbody></table>
    <div id="upchart" class="chart"></div>`;
  document.getElementById("pick").addEventListener("change", (e) => { location.search = new URLSearchParams(new FormData(e.currentTarget)).toString(); });
  const regions = doc.regions.map((r) => r.region);
  const line = (y, name, colour) => ({ type: "scatter", mode: "lines", name, x: regions, y: regions.map(() => 100 * y), line: { color: colour, dash: "dash" } });
  chart("kpichart", [
    { type: "bar", name: t("effect.completion"), x: regions, y: doc.regions.map((r) => (r.completion == null ? null : 100 * r.completion)), marker: { color: "#3b6fb6" } },
    { type: "bar", name: t("effect.churn"), x: regions, y: doc.regions.map((r) => (r.churn == null ? null : 100 * r.churn)), marker: { color: "#d0342c" } },
    line(doc.targets.completion, `${t("effect.target")} 35 %`, "#3b6fb6"), line(doc.targets.churn, `${t("effect.ceiling")} 7.5 %`, "#d0342c"),
  ], { title: { text: t("effect.kpi") }, barmode: "group", xaxis: { title: { text: t("c.region") } }, yaxis: { title: { text: t("effect.percent") + " (%)" } } });
  const statuses = [...new Set(doc.outcomes.map((o) => o.status))];
  chart("outchart", ["callcentre", "sms"].map((ch) => ({
    type: "bar", name: v(ch), x: statuses.map(v), y: statuses.map((s) => doc.outcomes.filter((o) => o.channel === ch && o.status === s).reduce((a, o) => a + o.count, 0)),
  })), { title: { text: t("effect.outcomes") }, barmode: "group", counts: true, xaxis: { title: { text: t("effect.status") } }, yaxis: { title: { text: t("effect.tasks") } } });
  const cells = doc.uplift.map((u) => v(u.light) + " · " + v(u.channel));
  chart("upchart", [
    { type: "bar", name: t("effect.contacted"), x: cells, y: doc.uplift.map((u) => (u.contacted_rate == null ? null : 100 * u.contacted_rate)), marker: { color: "#3b6fb6" },
      text: doc.uplift.map((u) => `n=${u.contacted}`), textposition: "outside" },
    { type: "bar", name: t("effect.holdout"), x: cells, y: doc.uplift.map((u) => (u.holdout_rate == null ? null : 100 * u.holdout_rate)), marker: { color: "#999" },
      text: doc.uplift.map((u) => `n=${u.holdout}`), textposition: "outside" },
  ], { title: { text: t("effect.uplift") }, barmode: "group", xaxis: { title: { text: t("c.light") + " · " + t("c.channel") } }, yaxis: { title: { text: t("effect.rate") + " (%)" } } });
}

applyLabels();
({ feed: feedPage, calls: callsPage, lights: lightsPage, subscriber: subscriberPage, effect: effectPage })[page]()
  .then(() => document.body.setAttribute("data-ready", "1"))
  .catch((err) => { app.insertAdjacentHTML("beforeend", `<p class="error">${esc(err.message)}</p>`); document.body.setAttribute("data-ready", "1"); });
