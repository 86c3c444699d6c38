/* Rate limits: everyone sees the limits that apply to them (a member: the organization's and their own; an
 * individual: their own) with what is left now; owners and admins see every member's and key's, set the
 * organization's or a member's (requests and tokens per minute, requests in flight, a member's credits per
 * day and month) and clear them. The authority enforces them on every request (README, "Rate limits").
 * Uses console.js's helpers (window.creditConsole); starts on `console:started`. */
(function () {
  "use strict";

  const $ = (selector, root) => (root || document).querySelector(selector);
  const c = window.creditConsole;
  const COUNTS = ["requests_per_minute", "tokens_per_minute", "max_parallel"];
  const CEILINGS = ["credits_per_day", "credits_per_month"];
  let shown = [];

  function whose(row) {
    const me = c.me();
    if (row.scope === "org") return "Organization";
    if (row.scope === "key") return `API key ${row.key_id} (${row.user_id})`;
    if (row.scope === "individual") return "You";
    return me && row.user_id === me.user_id ? `${row.user_id} (you)` : row.user_id;
  }

  /** "limit · what is left" for one limit; "—" when there is none. */
  function figure(limit, left, unit) {
    return limit === null ? "—" : `${limit} · ${left} ${unit}`;
  }

  function row(r, admin) {
    const cell = (name, text) => c.el("td", { class: `num ${name}`, text });
    const actions = admin ? c.el("td", { "data-view": "admin" },
      r.scope === "key" ? null : c.el("button", { type: "button", text: "Edit", "aria-label": `Edit limits of ${whose(r)}`,
        onclick: () => edit(r) }), " ",
      c.el("button", { type: "button", class: "danger", text: "Clear", "aria-label": `Clear limits of ${whose(r)}`,
        onclick: (event) => clear(event.target, r) })) : null;
    return c.el("tr", { "data-scope": r.scope, "data-who": r.key_id || r.user_id || r.org_id },
      c.el("th", { scope: "row", text: whose(r) }),
      cell("rpm", figure(r.requests_per_minute, r.requests_remaining, "left")),
      cell("tpm", figure(r.tokens_per_minute, r.tokens_remaining, "left")),
      cell("parallel", figure(r.max_parallel, r.open_holds, "open")),
      cell("day", r.credits_per_day === null ? "—" : `${c.credits(r.credits_per_day)} · ${c.credits(r.credits_today)} used`),
      cell("month", r.credits_per_month === null ? "—"
        : `${c.credits(r.credits_per_month)} · ${c.credits(r.credits_this_month)} used`),
      c.el("td", { text: `${c.when(r.updated_at)}` }), actions);
  }

  async function loadLimits() {
    const view = await c.api("/api/v1/console/limits");
    shown = view.data;
    const admin = c.me().view === "admin";
    $("#limits-summary").textContent = shown.length ? {
      org: "The organization's limits, each member's and each API key's, with what is left right now.",
      member: "The organization's limits and yours, with what is left right now.",
      individual: "Your limits, with what is left right now.",
    }[view.scope] : "No rate limits: only the credits available bound spending.";
    c.fillTable($("#limits-table"), shown, (r) => row(r, admin));
  }

  /** The form shows the chosen scope's current limits (an empty field keeps a limit as it is). */
  function edit(r) {
    const form = $("#limit-form");
    form.elements.user_id.value = r.scope === "member" ? r.user_id : "";
    fillForm();
    form.elements.requests_per_minute.focus();
  }

  function fillForm() {
    const form = $("#limit-form");
    const user = form.elements.user_id.value;
    const current = shown.find((r) => (user ? r.scope === "member" && r.user_id === user : r.scope === "org")) || {};
    for (const name of [...COUNTS, ...CEILINGS]) {
      form.elements[name].value = current[name] === undefined || current[name] === null ? "" : current[name];
    }
    for (const name of CEILINGS) form.elements[name].disabled = !user; // credit ceilings are for members
  }

  function clear(button, r) {
    if (!window.confirm(`Remove every rate limit of ${whose(r)}?`)) return;
    const body = r.scope === "key" ? { key_id: r.key_id, clear: true }
      : { user_id: r.scope === "member" ? r.user_id : "", clear: true };
    c.act(button, async () => {
      await c.api("/api/v1/console/limits", { method: "POST", body });
      await loadLimits();
      fillForm();
    }, `Limits of ${whose(r)} cleared.`);
  }

  c.onStart(() => c.duringStart(loadLimits().then(() => { if (c.me().view === "admin") fillForm(); })));

  // Admins set the organization's limits or any member's.
  c.onMembers((members) => {
    c.fillMembers($("#limit-form select[name=user_id]"), members, (u) => u, "The organization (all members together)");
    fillForm();
  });

  $("#limit-form select[name=user_id]").addEventListener("change", fillForm);
  $("#limits-refresh").addEventListener("click", (event) => c.act(event.target, loadLimits));

  $("#limit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    const user = form.elements.user_id.value;
    const body = { user_id: user };
    for (const name of [...COUNTS, ...CEILINGS]) {
      const value = form.elements[name].value.trim();
      if (value && !form.elements[name].disabled) body[name] = value;
    }
    c.act($("button[type=submit]", form), async () => {
      await c.api("/api/v1/console/limits", { method: "POST", body });
      await loadLimits();
      fillForm();
    }, `Limits of ${user || "the organization"} saved.`);
  });
})();
