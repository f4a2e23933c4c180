// nodelocal live page: polls /api/stats (same origin, no external assets) and fills in the page.
// Every string that came from the network (query names, client addresses) is set with textContent.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 4000;
  const SVG = "http://www.w3.org/2000/svg";
  let last = 0;

  const int = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
  const pct = (r) => (r == null ? "–" : (100 * r).toFixed(1) + "%");
  const rate = (x) => (x == null ? "–" : x >= 100 ? int(x) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
  const ms = (v) => (v == null ? "–" : v < 1 ? v.toFixed(2) + " ms" : v < 100 ? v.toFixed(1) + " ms" : int(v) + " ms");
  const bytes = (b) => {
    if (b == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : b) + " " + units[i];
  };
  const duration = (s) => {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
  };

  function set(key, text) {
    for (const el of document.querySelectorAll(`[data-k="${key}"]`)) el.textContent = text;
  }

  function spark(id, values, fixedMax) {
    const svg = document.getElementById(id);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const n = values.length;
    if (n < 2) return;
    const finite = values.filter((v) => v != null);
    const max = fixedMax || Math.max(1e-9, ...finite);
    const x = (i) => (100 * i) / (n - 1);
    const y = (v) => 29 - (27 * Math.min(v, max)) / max;
    // one polyline per run of known values; gaps (no traffic) stay empty
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        const pts = run.map(([i, v]) => `${x(i).toFixed(2)},${y(v).toFixed(2)}`).join(" ");
        const area = document.createElementNS(SVG, "polygon");
        area.setAttribute("class", "area");
        area.setAttribute("points", `${x(run[0][0]).toFixed(2)},30 ${pts} ${x(run[run.length - 1][0]).toFixed(2)},30`);
        svg.appendChild(area);
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("class", "line");
        line.setAttribute("points", pts);
        svg.appendChild(line);
      }
      run = [];
    };
    values.forEach((v, i) => (v == null ? flush() : run.push([i, v])));
    flush();
  }

  function meter(id, frac) {
    const el = document.getElementById(id);
    const f = Math.max(0, Math.min(1, frac || 0));
    el.style.width = (100 * f).toFixed(1) + "%";
    el.classList.toggle("high", f > 0.9);
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function rows(tableId, items, fill, columns) {
    const tbody = document.querySelector(`#${tableId} tbody`);
    const fresh = document.createElement("tbody");
    if (!items.length) {
      const tr = document.createElement("tr");
      cell(tr, "no data yet", "empty").colSpan = columns;
      fresh.appendChild(tr);
    }
    for (const item of items) {
      const tr = document.createElement("tr");
      fill(tr, item);
      fresh.appendChild(tr);
    }
    tbody.replaceWith(fresh);
  }

  function topRows(tableId, items) {
    rows(tableId, items, (tr, it) => {
      cell(tr, it.key, "key");
      const td = cell(tr, "", "num share");
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = (100 * it.share).toFixed(1) + "%";
      const label = document.createElement("span");
      label.textContent = pct(it.share);
      td.append(bar, label);
      cell(tr, rate(it.qps), "num");
    }, 3);
  }

  function render(s) {
    set("node", s.node);
    set("version", s.version);
    set("uptime", duration(s.uptime_s));
    set("cpu", s.process.cpu_percent.toFixed(1) + "%");
    set("rss", bytes(s.process.rss_bytes));
    const state = document.getElementById("state");
    state.dataset.state = s.ready ? "ready" : "not-ready";
    state.textContent = s.ready ? "ready" : "no upstream yet";

    const w = s.window, t = s.totals, c = s.cache;
    set("window.hit_rate", pct(w.hit_rate));
    set("window.denial_share", pct(w.denial_share));
    set("window.qps", rate(w.qps));
    set("window.p50_ms", ms(w.p50_ms));
    set("window.p90_ms", ms(w.p90_ms));
    set("window.p99_ms", ms(w.p99_ms));
    set("window.evictions_per_s", rate(w.evictions_per_s));
    for (const k of ["queries", "udp", "tcp", "hits", "hits_success", "hits_denial", "misses", "coalesced",
                     "fallthrough", "all_upstreams_failed", "dropped", "spoofed", "served_stale", "prefetch",
                     "dropped_busy", "dropped_late"]) {
      set("totals." + k, int(t[k]));
    }
    set("totals.hit_rate", pct(t.hit_rate));
    const rc = Object.entries(t.responses).sort((a, b) => b[1] - a[1]);
    set("responses", rc.length ? rc.map(([k, v]) => `${k} ${int(v)}`).join(", ") : "–");
    set("cache.entries", int(c.entries));
    set("cache.entries_success", int(c.entries_success));
    set("cache.entries_denial", int(c.entries_denial));
    set("cache.capacity", int(c.capacity));
    set("cache.bytes", bytes(c.bytes));
    set("cache.max_bytes", bytes(c.max_bytes));
    meter("fill-entries", c.capacity ? c.entries / c.capacity : 0);
    meter("fill-bytes", c.max_bytes ? c.bytes / c.max_bytes : 0);
    set("top.sample_every", int(s.top.sample_every));
    set("top.half_life_s", int(s.top.half_life_s));

    spark("spark-hit", s.series.hit_rate, 1);
    spark("spark-qps", s.series.qps);
    spark("spark-p99", s.series.p99_ms);
    set("peak_qps", rate(Math.max(0, ...s.series.qps)));

    rows("upstreams", s.upstreams, (tr, u) => {
      cell(tr, u.group);
      cell(tr, u.to, "key");
      cell(tr, u.healthy ? "up" : "down", u.healthy ? "up" : "down");
      cell(tr, rate(u.tries_per_s), "num");
      cell(tr, ms(u.avg_ms), "num");
      cell(tr, int(u.tries), "num");
      cell(tr, int(u.errors), "num");
    }, 7);
    rows("zones", s.zones, (tr, z) => {
      cell(tr, z.zone, "key");
      cell(tr, pct(z.hit_rate_window), "num");
      cell(tr, pct(z.hit_rate), "num");
      cell(tr, int(z.hits), "num");
      cell(tr, int(z.misses), "num");
      cell(tr, int(z.entries), "num");
    }, 6);
    topRows("top-names", s.top.names);
    topRows("top-clients", s.top.clients);
    topRows("top-types", s.top.types);
    document.title = `${pct(w.hit_rate)} hits · ${s.node} · nodelocal`;
  }

  async function refresh() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    const banner = document.getElementById("error");
    try {
      const r = await fetch("/api/stats", { cache: "no-store", signal: ctl.signal });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      render(await r.json());
      last = Date.now();
      banner.hidden = true;
      document.body.dataset.loaded = "1";
    } catch (e) {
      banner.textContent = `Cannot read /api/stats (${e.name === "AbortError" ? "timed out" : e.message}); retrying.`;
      banner.hidden = false;
      const state = document.getElementById("state");
      state.dataset.state = "offline";
      state.textContent = "offline";
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, REFRESH_MS);
    }
  }

  setInterval(() => {
    if (last) document.getElementById("updated").textContent = `updated ${Math.round((Date.now() - last) / 1000)} s ago`;
  }, 1000);
  refresh();
})();
