/* The credit console: plain JavaScript over the console REST API (/api/v1/console/…).
 * No build step. The API key lives in sessionStorage (this tab only) and is sent as
 * `Authorization: Bearer …`; without one, a sign-in through the identity provider (sso.js) is the
 * server's HttpOnly session cookie. Everything shown is built with textContent, never HTML.
 * This file signs in and shows the balance, the organization and usage; the other parts (keys.js,
 * alerts.js, payments.js, reports.js, limits.js, audit.js) use its helpers (window.creditConsole), start on
 * `console:started` (detail: the signed-in viewer, /me) and fill their member lists on
 * `console:members` (detail: the org's members, admins only). */
(function () {
  "use strict";

  const KEY = "creditConsole.apiKey";
  const ORG = "creditConsole.org";
  const $ = (selector, root) => (root || document).querySelector(selector);
  const state = { me: null, members: [], charts: {}, startJobs: [] };
  window.consoleCharts = state.charts; // read by the browser tests

  // ---- small helpers ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  /** "1234.500" → "1,234.500" (credits keep their three places). */
  function credits(text) {
    if (text === null || text === undefined) return "";
    const [whole, frac] = String(text).split(".");
    const sign = whole.startsWith("-") ? "-" : "";
    const digits = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return sign + digits + (frac !== undefined ? "." + frac : "");
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "") : "";
  }

  function say(message) {
    $("#status").textContent = message || "";
    if (message) setTimeout(() => { if ($("#status").textContent === message) $("#status").textContent = ""; }, 6000);
  }

  function fail(message) {
    $("#error").textContent = message || "";
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `Request failed (HTTP ${status})`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { Authorization: "Bearer " + key } : {}; // no key: the SSO session cookie
    const org = sessionStorage.getItem(ORG);
    if (org) headers["OpenAI-Organization"] = org;
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const response = await fetch(path, { method: opts.method || "GET", headers, body });
    if (opts.raw && response.ok) return response;
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      if (response.status === 401) signOut(key ? "Your API key was not accepted (revoked or invalid). Sign in again."
        : "You are not signed in (the session ended). Sign in again.");
      throw new ApiError(response.status, data);
    }
    return data;
  }

  /** Runs an action from a form or button: disables it, shows errors in the alert region. */
  async function act(control, action, done) {
    fail("");
    if (control) control.disabled = true;
    try {
      const result = await action();
      if (done) say(typeof done === "function" ? done(result) : done);
      return result;
    } catch (error) {
      fail(error.message);
      return undefined;
    } finally {
      if (control) control.disabled = false;
    }
  }

  function fillTable(table, rows, columns) {
    const body = $("tbody", table);
    body.replaceChildren();
    if (!rows.length) {
      const cols = $("thead tr", table).children.length;
      body.append(el("tr", {}, el("td", { colspan: cols, class: "empty", text: "Nothing yet." })));
      return;
    }
    for (const row of rows) body.append(columns(row));
  }

  function cards(target, items) {
    target.replaceChildren(...items.map(([label, value, id]) =>
      el("div", {}, el("dt", { text: label }), el("dd", { id, text: value }))));
  }

  // ---- sign in / out ----

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ORG);
    state.me = null;
    state.members = [];
    document.body.className = "";
    $("#app").hidden = true;
    $("#identity").hidden = true;
    $("#signin").hidden = false;
    fail(message || "");
    $("#api-key").value = "";
    $("#api-key").focus();
  }

  async function start() {
    const me = await api("/api/v1/console/me");
    state.me = me;
    document.body.className = `view-${me.view}` + (me.org_id ? " in-org" : "") + (me.operator ? " operator" : "");
    $("#signin").hidden = true;
    $("#app").hidden = false;
    $("#identity").hidden = false;
    const where = me.org_id ? ` · ${me.org_name || me.org_id} (${me.role})` : " · individual account";
    $("#who").textContent = `Signed in as ${me.user_id}${where}`;
    showBalance(me);
    setRange(30, false);
    const jobs = [loadUsage()];
    if (me.view === "admin") jobs.push(loadOrg());
    state.startJobs = [];
    document.dispatchEvent(new CustomEvent("console:started", { detail: me }));
    await Promise.all([...jobs, ...state.startJobs].map((job) => job.catch((error) => fail(error.message))));
  }

  /** Runs `handler(me)` whenever the console starts, and now when it already has (a script loaded late). */
  function onStart(handler) {
    document.addEventListener("console:started", (event) => handler(event.detail));
    if (state.me) handler(state.me);
  }

  /** A part's first load, which signing in waits for (so the page is complete when it shows). */
  function duringStart(job) {
    state.startJobs.push(job);
    return job;
  }

  /** Runs `handler(members)` whenever the organization's members are (re)loaded, and now if they were. */
  function onMembers(handler) {
    document.addEventListener("console:members", (event) => handler(event.detail));
    if (state.members.length) handler(state.members);
  }

  function showBalance(me) {
    const b = me.balance;
    $("#funding").textContent = me.org_id
      ? `Your allocation in ${me.org_name || me.org_id}` : "Your individual credits";
    cards($("#balance-cards"), [
      [me.org_id ? "Allocation" : "Credits", credits(b.limit), "balance-limit"],
      ["Used", credits(b.used), "balance-used"],
      ["Held", credits(b.held), "balance-held"],
      ["Available", credits(b.available), "balance-available"],
    ]);
  }

  async function refreshMe() {
    state.me = await api("/api/v1/console/me");
    showBalance(state.me);
  }

  // ---- organization (owner/admin) ----

  async function loadOrg() {
    const data = await api("/api/v1/console/org");
    const o = data.org;
    cards($("#pool-cards"), [
      ["Pool total", credits(o.pool_total), "pool-total"],
      ["Allocated", credits(o.allocated), "pool-allocated"],
      ["Unallocated", credits(o.unallocated), "pool-unallocated"],
      ["Used", credits(o.used), "pool-used"],
      ["Held", credits(o.held), "pool-held"],
    ]);
    state.members = data.members;
    fillTable($("#members-table"), data.members, (m) => {
      const input = el("input", { id: `alloc-${m.user_id}`, name: "allocation", inputmode: "decimal",
        value: m.allocation, required: true });
      const form = el("form", { "aria-label": `Allocation of ${m.user_id}` },
        el("label", { for: input.id, class: "visually-hidden", text: `New allocation for ${m.user_id}` }), input,
        el("button", { type: "submit", text: "Set" }));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        act($("button", form), async () => {
          await api("/api/v1/console/org/allocations", { method: "POST",
            body: { user_id: m.user_id, allocation: input.value.trim() } });
          await Promise.all([loadOrg(), refreshMe()]);
          $(`#alloc-${CSS.escape(m.user_id)}`).focus();
        }, `Allocation of ${m.user_id} set to ${credits(input.value.trim())} credits.`);
      });
      return el("tr", { "data-user": m.user_id },
        el("th", { scope: "row", text: m.user_id }), el("td", { text: m.role }),
        el("td", { class: "num", text: credits(m.allocation) }), el("td", { class: "num", text: credits(m.used) }),
        el("td", { class: "num", text: credits(m.held) }), el("td", { class: "num", text: credits(m.remaining) }),
        el("td", {}, form));
    });
    fillMembers($("#range-form select[name=user_id]"), data.members, (u) => u, "All members");
    document.dispatchEvent(new CustomEvent("console:members", { detail: data.members })); // keys.js, alerts.js
  }

  /** A <select> of the members (after an optional first option with value ""), keeping its choice. */
  function fillMembers(select, members, label, first, fallback) {
    const keep = select.value || fallback || "";
    const options = members.map((m) => el("option", { value: m.user_id, text: label(m.user_id) }));
    select.replaceChildren(...(first ? [el("option", { value: "", text: first })] : []), ...options);
    select.value = keep;
    if (select.selectedIndex < 0) select.selectedIndex = 0; // the kept one is gone
  }

  // ---- usage ----

  function isoDay(date) { return date.toISOString().slice(0, 10); }

  function setRange(days, reload) {
    const end = new Date();
    const start = new Date(end.getTime() - (days - 1) * 86400000);
    const form = $("#range-form");
    form.elements.start.value = isoDay(start);
    form.elements.end.value = isoDay(end);
    if (reload) act(null, refreshAll);
  }

  function rangeQuery() {
    const form = $("#range-form");
    const start = form.elements.start.value;
    const endDay = form.elements.end.value;
    const params = new URLSearchParams();
    if (start) params.set("start", `${start}T00:00:00Z`);
    if (endDay) {
      const end = new Date(`${endDay}T00:00:00Z`);
      params.set("end", new Date(end.getTime() + 86400000).toISOString().replace(".000", ""));
    }
    const user = form.elements.user_id.value;
    if (user && state.me && state.me.view === "admin") params.set("user_id", user);
    return params;
  }

  function days(startText, endText) {
    const out = [];
    for (let d = new Date(`${startText}T00:00:00Z`); isoDay(d) <= endText && out.length < 400;
      d = new Date(d.getTime() + 86400000)) out.push(isoDay(d));
    return out;
  }

  function chart(name, canvas, config) {
    if (typeof window.Chart !== "function") return;
    if (state.charts[name]) state.charts[name].destroy();
    state.charts[name] = new window.Chart(canvas, config);
  }

  function barConfig(labels, values, horizontal) {
    return {
      type: "bar",
      data: { labels, datasets: [{ label: "Credits", data: values, backgroundColor: "#0b5cad" }] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, indexAxis: horizontal ? "y" : "x",
        plugins: { legend: { display: false } },
        scales: { [horizontal ? "x" : "y"]: { beginAtZero: true, title: { display: true, text: "credits" } } },
      },
    };
  }

  async function loadUsage() {
    const params = rangeQuery();
    const [summary, records] = await Promise.all([
      api(`/api/v1/console/usage/summary?${params}`),
      api(`/api/v1/console/usage/records?${params}&limit=100`),
    ]);
    const form = $("#range-form");
    const requests = `${summary.total_requests} request${summary.total_requests === 1 ? "" : "s"}`;
    $("#usage-total").textContent = `${requests}, ${credits(summary.total)} credits ` +
      `from ${form.elements.start.value} to ${form.elements.end.value} (UTC).`;
    const byDay = Object.fromEntries(summary.by_day.map((g) => [g.key, g]));
    const labels = days(form.elements.start.value, form.elements.end.value);
    const dayValues = labels.map((d) => (byDay[d] ? byDay[d].credits_millicredits / 1000 : 0));
    chart("byDay", $("#chart-by-day"), barConfig(labels, dayValues, false));
    $("#chart-by-day").setAttribute("aria-label", "Credits by day: " +
      (summary.by_day.length ? summary.by_day.map((g) => `${g.key} ${g.credits}`).join(", ") : "no usage"));
    chart("byModel", $("#chart-by-model"), barConfig(summary.by_model.map((g) => g.key),
      summary.by_model.map((g) => g.credits_millicredits / 1000), true));
    $("#chart-by-model").setAttribute("aria-label", "Credits by model: " +
      (summary.by_model.length ? summary.by_model.map((g) => `${g.key} ${g.credits}`).join(", ") : "no usage"));

    const groupRow = (g) => el("tr", {}, el("th", { scope: "row", text: g.key }),
      el("td", { class: "num", text: g.requests }), el("td", { class: "num", text: credits(g.credits) }));
    fillTable($("#by-day-table"), summary.by_day, groupRow);
    fillTable($("#by-model-table"), summary.by_model, groupRow);
    fillTable($("#by-user-table"), summary.by_user, groupRow);
    fillTable($("#by-service-type-table"), summary.by_service_type, groupRow);

    fillTable($("#records-table"), records.data, (r) => {
      const m = r.metadata || {};
      const tokens = m.prompt_tokens !== undefined ? `${m.prompt_tokens} / ${m.completion_tokens}` : "";
      return el("tr", { "data-request-id": r.request_id },
        el("td", { text: when(r.created_at) }), el("td", {}, el("code", { text: r.request_id })),
        el("td", { text: r.user_id }), el("td", { text: r.model }), el("td", { text: r.service_type }),
        el("td", { class: "num", text: credits(r.credits) }), el("td", { class: "num", text: tokens }),
        el("td", {}, el("details", {}, el("summary", { text: "show" }),
          el("pre", { text: JSON.stringify(m, null, 2) }))));
    });
  }

  /** Usage for the chosen range, and fresh balances next to it. */
  function refreshAll() {
    const jobs = [loadUsage(), refreshMe()];
    if (state.me && state.me.view === "admin") jobs.push(loadOrg());
    return Promise.all(jobs);
  }

  $("#range-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("button[type=submit]", event.target), refreshAll);
  });
  for (const button of document.querySelectorAll("#range-form [data-days]")) {
    button.addEventListener("click", () => setRange(Number(button.dataset.days), true));
  }

  $("#export-csv").addEventListener("click", (event) => {
    act(event.target, async () => {
      const response = await api(`/api/v1/console/usage/export.csv?${rangeQuery()}`, { raw: true });
      const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: match ? match[1] : "usage.csv" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    }, "CSV exported.");
  });

  // ---- what keys.js, alerts.js, payments.js, reports.js and limits.js use ----

  /** Starts on the SSO session (sso.js), unless an API key was given in this tab. */
  function startSession() {
    if (sessionStorage.getItem(KEY) || state.me) return Promise.resolve();
    return act(null, async () => {
      await start();
      $("#overview-title").focus();
    }).then(() => { if (!state.me) signOut($("#error").textContent); });
  }

  window.creditConsole = { api, act, el, credits, when, say, fail, fillTable, fillMembers, refreshAll, onStart,
    onMembers, duringStart, startSession, me: () => state.me };

  // ---- wiring ----

  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#api-key").value.trim());
    const org = $("#org-choice").value.trim();
    if (org) sessionStorage.setItem(ORG, org); else sessionStorage.removeItem(ORG);
    act($("button", event.target), async () => {
      await start();
      $("#api-key").value = "";
      $("#overview-title").focus();
    }).then(() => { if (!state.me) sessionStorage.removeItem(KEY); });
  });

  $("#sign-out").addEventListener("click", () => signOut(""));

  if (sessionStorage.getItem(KEY)) {
    act(null, start).then(() => { if (!state.me) signOut($("#error").textContent); });
  } else {
    $("#api-key").focus();
  }
})();
