/* API keys: everyone sees and revokes their own keys and creates keys for themselves; owners and admins
 * see the organization's keys too and create keys for any member. A new key's secret is shown once; a key
 * may expire (optional); the table shows each key's expiry and last use (to the minute).
 * Uses console.js's helpers (window.creditConsole); starts on `console:started`. */
(function () {
  "use strict";

  const $ = (selector, root) => (root || document).querySelector(selector);
  const c = window.creditConsole;

  async function loadKeys() {
    const me = c.me();
    const keys = (await c.api("/api/v1/console/keys")).data;
    c.fillTable($("#keys-table"), keys, (k) => {
      const mine = me && k.key_id === me.key_id;
      const action = k.active
        ? c.el("button", { type: "button", class: "danger", "aria-label": `Revoke ${k.key_id}`, text: "Revoke",
          onclick: (event) => {
            const warning = mine ? "This is the key you are signed in with. " : "";
            if (!window.confirm(`${warning}Revoke ${k.key_id}? Requests with it stop within seconds.`)) return;
            c.act(event.target, async () => {
              await c.api(`/api/v1/console/keys/${encodeURIComponent(k.key_id)}`, { method: "DELETE" });
              await loadKeys();
            }, `Key ${k.key_id} revoked.`);
          } })
        : "";
      return c.el("tr", { "data-key": k.key_id },
        c.el("td", {}, c.el("code", { text: k.key_id }), mine ? " (this session)" : ""),
        c.el("td", { text: k.user_id }), c.el("td", { text: k.name }), c.el("td", { text: k.org_id || "—" }),
        c.el("td", { text: c.when(k.created_at) }),
        c.el("td", { text: k.expires_at ? c.when(k.expires_at) : "never" }),
        c.el("td", { text: k.last_used_at ? c.when(k.last_used_at) : "never" }),
        c.el("td", {}, c.el("span", { class: `badge ${k.active && !k.expired ? "ok" : "bad"}`,
          text: !k.active ? `revoked ${c.when(k.revoked_at)}` : k.expired ? "expired" : "active" })),
        c.el("td", {}, action));
    });
  }

  c.onStart(() => c.duringStart(loadKeys()));

  // Admins create keys for any member: the owner list follows the organization's members.
  c.onMembers((members) => c.fillMembers($("#key-form select[name=user_id]"), members, (u) => u, "",
    c.me() && c.me().user_id));

  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { name: form.elements.name.value.trim() };
    if (c.me().view === "admin") body.user_id = form.elements.user_id.value;
    // datetime-local is the browser's local time: sent as UTC. Empty: the key does not expire.
    const expires = form.elements.expires_at.value;
    if (expires) body.expires_at = new Date(expires).toISOString();
    c.act($("button", form), async () => {
      const created = await c.api("/api/v1/console/keys", { method: "POST", body });
      $("#new-secret-user").textContent = created.user_id;
      $("#new-secret-value").textContent = created.secret;
      $("#new-secret").hidden = false;
      $("#new-secret").focus();
      form.elements.name.value = "";
      form.elements.expires_at.value = "";
      await loadKeys();
    }, "Key created.");
  });
})();
