/* Statement and forecast: what came into an account over a period and what went out (opening balance →
 * credits in, with their source → refunds and adjustments → allocation changes → usage by model and by
 * member → closing balance), the same as CSV, and where each balance is heading at its recent burn rate.
 * Owners and admins see the pool (or a member's allocation); members their allocation; individuals their
 * balance. Uses console.js's helpers (window.creditConsole); starts on `console:started`. */
(function () {
  "use strict";

  const $ = (selector) => document.querySelector(selector);
  const KIND_TEXT = { purchase: "Purchase", top_up: "Top-up", grant: "Grant", refund: "Refund",
    adjustment: "Adjustment", allocation: "Allocation change" };
  let me = null;

  function isoDay(date) { return date.toISOString().slice(0, 10); }

  /** This calendar month so far, or the whole of last month (UTC). */
  function setPeriod(which) {
    const now = new Date();
    const first = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
    const form = $("#statement-form");
    if (which === "last") {
      form.elements.start.value = isoDay(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)));
      form.elements.end.value = isoDay(new Date(first.getTime() - 86400000));
    } else {
      form.elements.start.value = isoDay(first);
      form.elements.end.value = isoDay(now);
    }
  }

  function periodQuery() {
    const form = $("#statement-form");
    const params = new URLSearchParams({ start: form.elements.start.value, end: form.elements.end.value });
    const user = form.elements.user_id.value;
    if (user && me.view === "admin") params.set("user_id", user);
    return params;
  }

  function signed(c, text) {
    return (String(text).startsWith("-") ? "" : "+") + c.credits(text);
  }

  function accountText(account) {
    if (account.scope === "pool") return `The pool of ${account.org_id}`;
    if (account.scope === "allocation") {
      return account.user_id === me.user_id ? `Your allocation in ${account.org_id}`
        : `${account.user_id}'s allocation in ${account.org_id}`;
    }
    return "Your individual credits";
  }

  function lineRow(c, line) {
    return c.el("tr", { "data-kind": line.kind }, c.el("td", { text: c.when(line.at) }),
      c.el("td", { text: KIND_TEXT[line.kind] || line.kind }), c.el("td", { text: line.source }),
      c.el("td", {}, line.reference ? c.el("code", { text: line.reference }) : ""),
      c.el("td", { class: "num", text: signed(c, line.amount) }));
  }

  function totalRow(c, id, label, at, amount) {
    return c.el("tr", { id, class: "total" }, c.el("td", { text: c.when(at) }),
      c.el("th", { scope: "row", colspan: 3, text: label }), c.el("td", { class: "num", text: amount }));
  }

  function showStatement(c, s) {
    $("#statement-account").textContent = `${accountText(s.account)}, ${s.start_date} to ${s.end_date} (UTC)` +
      (s.up_to_now ? ", up to now" : "");
    const usage = s.usage_millicredits ? signed(c, "-" + s.usage) : c.credits(s.usage);
    const cards = [["Opening balance", c.credits(s.opening_balance), "statement-opening"],
      ["Credits in", signed(c, s.credits_in_total), "statement-credits-in"],
      ["Refunds and adjustments", signed(c, s.adjustments_total), "statement-adjustments"],
      ["Usage", usage, "statement-usage"],
      ["Closing balance", c.credits(s.closing_balance), "statement-closing"]];
    if (s.account.scope === "allocation") {
      cards.splice(3, 0, ["Allocation changes", signed(c, s.allocation_changes_total), "statement-allocation"]);
    }
    $("#statement-cards").replaceChildren(...cards.map(([label, value, id]) => c.el("div", {},
      c.el("dt", { text: label }), c.el("dd", { id, text: value }))));
    $("#statement-table tbody").replaceChildren(
      totalRow(c, "statement-row-opening", "Opening balance", s.start, c.credits(s.opening_balance)),
      ...s.credits_in.map((line) => lineRow(c, line)), ...s.adjustments.map((line) => lineRow(c, line)),
      ...s.allocation_changes.map((line) => lineRow(c, line)),
      totalRow(c, "statement-row-usage", "Usage in the period (below, by model and by member)", null, usage),
      totalRow(c, "statement-row-closing", "Closing balance", s.end,
        c.credits(s.closing_balance)));
    const usageRow = (g) => c.el("tr", {}, c.el("th", { scope: "row", text: g.key || "(unnamed)" }),
      c.el("td", { class: "num", text: g.requests }), c.el("td", { class: "num", text: c.credits(g.credits) }));
    c.fillTable($("#statement-by-model"), s.usage_by_model, usageRow);
    c.fillTable($("#statement-by-member"), s.usage_by_member, usageRow);
    $("#statement-by-member").closest(".scroll").hidden = s.account.scope !== "pool";
  }

  async function loadStatement(c) {
    showStatement(c, await c.api(`/api/v1/console/statement?${periodQuery()}`));
  }

  /** "runs out on 2025-07-14" (UTC), or why it does not. */
  function runsOut(line, windowDays) {
    if (!line.runs_out_at) return `no usage in the last ${windowDays} days`;
    if (line.remaining_millicredits <= 0) return "nothing left";
    return `at this rate, runs out on ${line.runs_out_at.slice(0, 10)}`;
  }

  function forecastRow(c, label, line, windowDays) {
    return c.el("tr", { "data-account": line.user_id || "pool" }, c.el("th", { scope: "row", text: label }),
      c.el("td", { class: "num", text: c.credits(line.remaining) }),
      c.el("td", { class: "num", text: c.credits(line.used_in_window) }),
      c.el("td", { class: "num", text: c.credits(line.burn_rate_per_day) }),
      c.el("td", { class: "runs-out", "data-runs-out": line.runs_out_at || "", text: runsOut(line, windowDays) }));
  }

  async function loadForecast(c) {
    const days = $("#forecast-form").elements.window_days.value;
    const f = await c.api(`/api/v1/console/forecast?window_days=${encodeURIComponent(days)}`);
    const rows = [];
    if (f.total) rows.push([f.scope === "org" ? "Organization pool" : "Your credits", f.total]);
    for (const m of f.members) rows.push([m.user_id === me.user_id ? `${m.user_id} (you)` : `${m.user_id}'s allocation`, m]);
    c.fillTable($("#forecast-table"), rows, ([label, line]) => forecastRow(c, label, line, f.window_days));
    const [label, first] = rows[0] || [];
    $("#forecast-summary").textContent = first ? `${label}: ${runsOut(first, f.window_days)}.` : "";
  }

  window.creditConsole.onStart((viewer) => {
    const c = window.creditConsole;
    me = viewer;
    setPeriod("this");
    c.act(null, () => Promise.all([loadForecast(c), loadStatement(c)]));
  });

  // Admins read the pool's statement or any member's allocation's.
  window.creditConsole.onMembers((members) => window.creditConsole.fillMembers(
    $("#statement-form select[name=user_id]"), members, (u) => `${u}'s allocation`, "The organization's pool"));

  $("#statement-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const c = window.creditConsole;
    c.act(event.target.querySelector("button[type=submit]"), () => loadStatement(c));
  });

  for (const button of document.querySelectorAll("#statement-form [data-period]")) {
    button.addEventListener("click", () => {
      const c = window.creditConsole;
      setPeriod(button.dataset.period);
      c.act(button, () => loadStatement(c));
    });
  }

  $("#statement-csv").addEventListener("click", (event) => {
    const c = window.creditConsole;
    c.act(event.target, async () => {
      const response = await c.api(`/api/v1/console/statement.csv?${periodQuery()}`, { raw: true });
      const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const url = URL.createObjectURL(await response.blob());
      const link = c.el("a", { href: url, download: match ? match[1] : "statement.csv" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    }, "Statement downloaded.");
  });

  $("#forecast-form").addEventListener("change", () => {
    const c = window.creditConsole;
    c.act(null, () => loadForecast(c));
  });
})();
