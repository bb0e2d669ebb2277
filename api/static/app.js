// citysense dashboard: plain JS, no library, no network beyond this API.
"use strict";
(function () {
  const V1 = "/api/v1";
  const GRADE = {1: "red", 2: "orange", 3: "yellow", 4: "blue"};
  const SVGNS = "http://www.w3.org/2000/svg";
  const state = {lang: localStorage.getItem("citysense.lang") || "zh", key: localStorage.getItem("citysense.key") || "",
                 role: null, stream: null, timer: null, slowTimer: null};
  const $ = (id) => document.getElementById(id);
  const t = (k) => (window.I18N[state.lang] || {})[k] || k;

  function applyLang() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    $("lang").textContent = t("lang");
  }

  function say(msg) { $("status").textContent = msg || ""; }

  async function api(path, opts) {
    const res = await fetch(V1 + path, Object.assign({}, opts, {headers: {"X-API-Key": state.key, "Content-Type": "application/json"}}));
    if (res.status === 401) { say(t("badKey")); throw new Error("401"); }
    if (!res.ok) { const body = await res.text(); say(res.status + " " + body.slice(0, 200)); throw new Error(String(res.status)); }
    return res.status === 204 ? null : res.json();
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v));
    return e;
  }

  async function overview() {
    const o = await api("/overview");
    $("t-online").textContent = o.totals.online;
    $("t-late").textContent = o.totals.late;
    $("t-offline").textContent = o.totals.offline;
    $("t-rate").textContent = o.uplinks_per_s.toFixed(1);
    $("t-readings").textContent = o.readings_recent;
    const g = o.open_alerts_by_grade;
    $("t-alerts").textContent = g.red + g.orange + g.yellow + g.blue;
    $("t-alert-grades").textContent = ["red", "orange", "yellow", "blue"].map((k) => t(k) + " " + g[k]).join(" · ");
    $("t-chargers").textContent = o.chargers.available;
    $("t-charger-detail").textContent = t("charging") + " " + o.chargers.charging + " · " + t("faulted") + " " + o.chargers.faulted + " · " + t("offline") + " " + o.chargers.offline;
    const b = o.bridges_by_grade;
    $("t-bridges").textContent = b.red + b.orange + b.yellow + b.blue;
    $("t-bridge-detail").textContent = ["red", "orange", "yellow", "blue"].map((k) => t(k) + " " + b[k]).join(" · ");
  }

  async function drawMap() {
    const m = await api("/map?cell_deg=0.02");
    const box = $("map");
    box.replaceChildren();
    const pts = m.cells.map((c) => [c.lat, c.lon]).concat(m.bridges.filter((b) => b.lat != null).map((b) => [b.lat, b.lon]));
    if (!pts.length) return;
    const lats = pts.map((p) => p[0]), lons = pts.map((p) => p[1]);
    const [la0, la1, lo0, lo1] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
    const sx = 560 / Math.max(lo1 - lo0, 1e-6), sy = 410 / Math.max(la1 - la0, 1e-6), s = Math.min(sx, sy);
    const x = (lon) => 20 + (lon - lo0) * s, y = (lat) => 430 - (lat - la0) * s;
    m.cells.forEach((c) => {
      const n = c.online + c.late + c.offline;
      const worst = c.offline > 0 ? "offline" : (c.late > 0 ? "late" : "online");
      const colour = c.online >= n / 2 ? "var(--online)" : (c.late >= c.offline ? "var(--late)" : "var(--offline)");
      const circle = svg("circle", {cx: x(c.lon), cy: y(c.lat), r: Math.min(14, 2 + Math.sqrt(n)), fill: colour,
                                    "fill-opacity": 0.7, class: "cell " + worst});
      const title = svg("title", {});
      title.textContent = `${t("online")} ${c.online} · ${t("late")} ${c.late} · ${t("offline")} ${c.offline}`;
      circle.appendChild(title);
      box.appendChild(circle);
    });
    m.bridges.filter((b) => b.lat != null).forEach((b) => {
      const cx = x(b.lon), cy = y(b.lat);
      const colour = b.worst_grade ? `var(--${GRADE[b.worst_grade]})` : "#d0d7de";
      const d = svg("path", {d: `M${cx},${cy - 7} L${cx + 6},${cy} L${cx},${cy + 7} L${cx - 6},${cy} Z`, fill: colour,
                             stroke: "#000", class: "bridge", "data-site": b.site_id});
      const title = svg("title", {});
      title.textContent = b.name + (b.worst_grade ? " · " + t(GRADE[b.worst_grade]) : "");
      d.appendChild(title);
      box.appendChild(d);
    });
  }

  async function alerts() {
    const page = await api("/alerts?state=open&limit=50");
    const body = $("alerts").querySelector("tbody");
    body.replaceChildren();
    page.items.forEach((a) => {
      const tr = el("tr", {"data-alert": a.alert_id});
      tr.appendChild(el("td", {class: "g" + a.grade}, t(GRADE[a.grade])));
      tr.appendChild(el("td", {}, a.device_id));
      tr.appendChild(el("td", {}, a.rule_id));
      tr.appendChild(el("td", {}, t(a.state)));
      const cell = el("td", {});
      if (a.acknowledged) {
        cell.textContent = t("acked");
      } else if (state.role === "operator" || state.role === "admin") {
        const btn = el("button", {type: "button", class: "ack", "data-alert": a.alert_id}, t("ack"));
        btn.addEventListener("click", async () => {
          btn.disabled = true;
          await api(`/alerts/${a.alert_id}/acknowledge`, {method: "POST", body: "{}"});
          await alerts();
        });
        cell.appendChild(btn);
      }
      tr.appendChild(cell);
      body.appendChild(tr);
    });
  }

  async function bridges() {
    const list = await api("/bridges");
    const grid = $("bridges");
    grid.replaceChildren();
    list.forEach((b) => {
      const card = el("div", {class: "card" + (b.site.worst_grade ? " g" + b.site.worst_grade : ""), "data-site": b.site.site_id});
      card.appendChild(el("b", {}, b.site.name));
      b.channels.forEach((ch) => ch.values.slice(0, 3).forEach((v) => card.appendChild(el("div", {}, `${v.metric} ${v.value.toFixed(2)}`))));
      grid.appendChild(card);
    });
  }

  async function chargers() {
    const list = await api("/chargers/stations");
    const body = $("chargers").querySelector("tbody");
    body.replaceChildren();
    list.forEach((s) => {
      const tr = el("tr", {});
      tr.appendChild(el("td", {}, s.name));
      ["available", "charging", "faulted", "offline"].forEach((k) => tr.appendChild(el("td", {class: k}, String(s.counts[k] || 0))));
      body.appendChild(tr);
    });
  }

  async function metrics() {
    const dev = $("c-device").value.trim();
    if (!dev) return;
    const d = await api("/devices/" + encodeURIComponent(dev));
    const sel = $("c-metric"), keep = sel.value;
    sel.replaceChildren();
    d.latest.forEach((v) => sel.appendChild(el("option", {value: v.metric}, v.metric)));
    if (keep && d.latest.some((v) => v.metric === keep)) sel.value = keep;
  }

  async function chart() {
    const dev = $("c-device").value.trim(), metric = $("c-metric").value, hours = Number($("c-range").value);
    const box = $("chart");
    box.replaceChildren();
    if (!dev || !metric) return;
    const to = new Date(), from = new Date(to.getTime() - hours * 3600e3);
    const bucket = Math.max(60, Math.ceil(hours * 3600 / 300 / 60) * 60);  // about 300 points, whole minutes
    const q = new URLSearchParams({metric, from: from.toISOString(), to: to.toISOString(), bucket: String(bucket)});
    const s = await api(`/devices/${encodeURIComponent(dev)}/series?${q}`);
    if (!s.v.length) { const tx = svg("text", {x: 300, y: 100, fill: "#9aa7b4", "text-anchor": "middle"}); tx.textContent = t("noData"); box.appendChild(tx); return; }
    const ts = s.t.map((x) => Date.parse(x)), lo = Math.min(...s.v), hi = Math.max(...s.v);
    const x = (v) => 40 + (v - from.getTime()) / (to.getTime() - from.getTime()) * 550;
    const y = (v) => 185 - (hi === lo ? 0.5 : (v - lo) / (hi - lo)) * 170;
    const path = s.v.map((v, i) => `${i ? "L" : "M"}${x(ts[i]).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    box.appendChild(svg("path", {d: path, fill: "none", stroke: "#4fa3ff", "stroke-width": 1.5, class: "series"}));
    [[hi, 15], [lo, 185]].forEach(([v, yy]) => { const tx = svg("text", {x: 2, y: yy, fill: "#9aa7b4", "font-size": 10}); tx.textContent = v.toPrecision(4); box.appendChild(tx); });
  }

  // SSE through fetch (EventSource cannot send the key header); reconnects after a pause.
  async function stream() {
    if (state.stream) state.stream.abort();
    const ctl = new AbortController();
    state.stream = ctl;
    try {
      const res = await fetch(V1 + "/stream/alerts", {headers: {"X-API-Key": state.key}, signal: ctl.signal});
      if (!res.ok) throw new Error(String(res.status));
      $("live").classList.add("on");
      const reader = res.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0 || (i = buf.indexOf("\r\n\r\n")) >= 0) {
          const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
          if (/^event: ?alert/m.test(chunk)) { alerts().catch(() => {}); overview().catch(() => {}); }
        }
      }
    } catch (e) { /* aborted or dropped: reconnect below */ }
    $("live").classList.remove("on");
    if (state.stream === ctl && !ctl.signal.aborted) setTimeout(stream, 3000);
  }

  async function refresh() {
    await Promise.all([overview(), alerts()]);
  }

  async function connect() {
    if (!state.key) { say(t("needKey")); return; }
    try {
      const me = await api("/me");
      state.role = me.role;
      $("who").textContent = `${me.name} (${me.role})`;
      say("");
      await Promise.all([refresh(), drawMap(), bridges(), chargers(), metrics().then(chart)]);
    } catch (e) { return; }
    clearInterval(state.timer);
    clearInterval(state.slowTimer);
    state.timer = setInterval(() => { refresh().catch(() => {}); }, 5000);
    state.slowTimer = setInterval(() => { drawMap().catch(() => {}); bridges().catch(() => {}); chargers().catch(() => {}); }, 30000);
    stream();
  }

  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key").value.trim();
    localStorage.setItem("citysense.key", state.key);
    $("key").value = "";
    connect();
  });
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("citysense.lang", state.lang);
    applyLang();
    refresh().catch(() => {});
  });
  $("chartform").addEventListener("submit", (ev) => { ev.preventDefault(); metrics().then(chart).catch(() => {}); });
  $("c-device").addEventListener("change", () => { metrics().catch(() => {}); });
  applyLang();
  connect();
})();
