/* The audit log (owners and admins; operators, listed in CONSOLE_OPERATORS, may tick "every organization"):
 * every change made to the organization, newest first, with when, who
 * (the authority token that made it, the person it acted for and their address), what, and each changed field
 * before → after; filtered by who, action and days (UTC), paged back 50 at a time, exported as CSV with the
 * same filters. Members never see it (the API answers them 403). Uses console.js's helpers
 * (window.creditConsole); starts on `console:started`, reloads when its section is opened. */
(function () {
  "use strict";

  const $ = (selector, root) => (root || document).querySelector(selector);
  const c = window.creditConsole;
  const PAGE = 50;
  let older = null; // the next page's before_id (null: none older)

  function filters() {
    const form = $("#audit-form");
    const params = new URLSearchParams();
    for (const name of ["actor", "action"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    if (form.elements.all_orgs.checked) params.set("all_orgs", "true");
    if (form.elements.start.value) params.set("start", `${form.elements.start.value}T00:00:00Z`);
    if (form.elements.end.value) { // the whole last day
      const end = new Date(`${form.elements.end.value}T00:00:00Z`);
      params.set("end", new Date(end.getTime() + 86400000).toISOString().replace(".000", ""));
    }
    return params;
  }

  /** A JSON value as a cell shows it: "—" for none. */
  function shown(value) {
    return value === null || value === undefined ? "—" : typeof value === "string" ? value : JSON.stringify(value);
  }

  function filterBy(value) {
    $("#audit-form").elements.actor.value = value;
    c.act(null, () => load(0));
  }

  function who(r) {
    const cell = c.el("td", { class: "audit-who" }, c.el("span", { class: "actor", text: r.actor }));
    if (r.on_behalf_of) {
      cell.append(" for ", c.el("button", { type: "button", class: "link on-behalf-of", text: r.on_behalf_of,
        title: "Show only this person's changes", onclick: () => filterBy(r.on_behalf_of) }));
    }
    if (r.forwarded_for) cell.append(c.el("span", { class: "muted forwarded-for", text: ` from ${r.forwarded_for}` }));
    return cell;
  }

  function changes(r) {
    if (!r.changes.length) return c.el("td", { class: "muted", text: "no change" });
    return c.el("td", {}, c.el("ul", { class: "changes" }, r.changes.map((x) => c.el("li", { "data-field": x.field },
      c.el("code", { text: x.field }), ": ", c.el("span", { class: "before", text: shown(x.before) }), " → ",
      c.el("span", { class: "after", text: shown(x.after) })))));
  }

  /** " in <org>" when every organization's records are shown (an operator's view). */
  function org(r) {
    const everyOrg = $("#audit-form").elements.all_orgs.checked;
    return everyOrg && r.org_id && r.org_id !== r.target_id ? ` in ${r.org_id}` : "";
  }

  function row(r) {
    return c.el("tr", { "data-audit-id": r.audit_id, "data-action": r.action },
      c.el("td", { text: c.when(r.at) }), who(r), c.el("td", {}, c.el("code", { text: r.action })),
      c.el("td", { text: `${r.target_kind} ${r.target_id}${org(r)}`.trim() }), changes(r));
  }

  /** The page of records older than `beforeId` (0: the newest). */
  async function load(beforeId) {
    const params = filters();
    params.set("limit", PAGE);
    if (beforeId) params.set("before_id", beforeId);
    const page = await c.api(`/api/v1/console/audit?${params}`);
    older = page.next_before_id;
    c.fillTable($("#audit-table"), page.data, row);
    $("#audit-older").hidden = !older;
    $("#audit-newest").hidden = !beforeId;
  }

  c.onStart((me) => {
    if (me.operator) {
      $("#audit-all-label").hidden = false;
      if (me.view !== "admin") { // no org of their own to show: every organization's, always
        const box = $("#audit-form").elements.all_orgs;
        box.checked = true;
        box.disabled = true;
      }
    }
    if (me.view === "admin" || me.operator) c.duringStart(load(0));
  });

  // Opening the section shows what changed since.
  $("nav a[href='#audit']").addEventListener("click", () => c.act(null, () => load(0)));

  $("#audit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    c.act($("button[type=submit]", event.target), () => load(0));
  });

  $("#audit-older").addEventListener("click", (event) => c.act(event.target, () => load(older)));

  $("#audit-newest").addEventListener("click", (event) => c.act(event.target, () => load(0)));

  $("#audit-csv").addEventListener("click", (event) => {
    c.act(event.target, async () => {
      const response = await c.api(`/api/v1/console/audit/export.csv?${filters()}`, { raw: true });
      const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const url = URL.createObjectURL(await response.blob());
      const link = c.el("a", { href: url, download: match ? match[1] : "audit.csv" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    }, "Audit log exported.");
  });
})();
