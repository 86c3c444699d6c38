/* Low-balance alerts (members of an organization): the thresholds with their state and the alerts sent;
 * owners and admins also set the webhook the alerts are POSTed to and add or remove thresholds on the pool
 * or on a member's allocation. Uses console.js's helpers (window.creditConsole); starts on
 * `console:started`. */
(function () {
  "use strict";

  const $ = (selector, root) => (root || document).querySelector(selector);
  const c = window.creditConsole;

  function thresholdText(t) {
    return t.kind === "percent" ? `${t.value} % (${c.credits(t.threshold)} credits)`
      : `${c.credits(t.threshold)} credits`;
  }

  function watching(item) {
    return item.scope === "pool" ? "Organization pool" : `${item.user_id}'s allocation`;
  }

  async function loadAlerts() {
    const data = await c.api("/api/v1/console/alerts");
    const admin = c.me().view === "admin";
    if (data.webhook) {
      $("#webhook-current").textContent = data.webhook.url
        ? `Alerts go to ${data.webhook.url} (secret set; it is never shown).` : "No webhook yet: alerts are only recorded.";
      $("#webhook-form").elements.url.value = data.webhook.url || "";
    }
    c.fillTable($("#thresholds-table"), data.thresholds, (t) => {
      const remove = c.el("button", { type: "button", class: "danger", text: "Remove",
        "aria-label": `Remove threshold ${t.threshold_id}`, onclick: (event) => c.act(event.target, async () => {
          await c.api(`/api/v1/console/alerts/thresholds/${t.threshold_id}`, { method: "DELETE" });
          await loadAlerts();
        }, "Threshold removed.") });
      return c.el("tr", { "data-threshold": t.threshold_id },
        c.el("td", { text: watching(t) }), c.el("td", { text: thresholdText(t) }),
        c.el("td", { class: "num", text: c.credits(t.remaining) }),
        c.el("td", {}, c.el("span", { class: `badge ${t.state === "armed" ? "ok" : "warn"}`,
          text: t.state === "armed" ? "armed" : "fired (re-arms above)" })),
        admin ? c.el("td", { "data-view": "admin" }, remove) : null);
    });
    c.fillTable($("#events-table"), data.events, (e) => c.el("tr", { "data-event": e.event_id },
      c.el("td", { text: c.when(e.created_at) }), c.el("td", { text: watching(e) }),
      c.el("td", { text: thresholdText(e) }), c.el("td", { class: "num", text: c.credits(e.remaining) }),
      c.el("td", {}, c.el("span", { class: `badge ${e.status === "delivered" ? "ok" : e.status === "pending" ? "warn"
        : "bad"}`, text: e.status.replace("_", " ") })),
      c.el("td", { class: "num", text: e.attempts }), c.el("td", { text: e.last_error || "" })));
  }

  c.onStart((me) => { if (me.org_id) c.duringStart(loadAlerts()); });

  // Admins watch the pool or any member's allocation.
  c.onMembers((members) => c.fillMembers($("#threshold-form select[name=user_id]"), members,
    (u) => `${u}'s allocation`, "The organization's pool"));

  $("#webhook-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { url: form.elements.url.value.trim(), secret: form.elements.secret.value };
    c.act($("button", form), async () => {
      await c.api("/api/v1/console/alerts/webhook", { method: "POST", body });
      form.elements.secret.value = "";
      await loadAlerts();
    }, body.url ? "Webhook saved." : "Webhook removed.");
  });

  $("#threshold-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    const body = Object.fromEntries(new FormData(form));
    c.act($("button", form), async () => {
      await c.api("/api/v1/console/alerts/thresholds", { method: "POST", body });
      form.elements.value.value = "";
      await loadAlerts();
    }, "Threshold added.");
  });
})();
