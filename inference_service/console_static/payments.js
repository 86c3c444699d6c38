/* Buy credits (owners and admins): packs or an amount → a Stripe Checkout Session → Stripe's page.
 * Back from Stripe (?checkout=success&session_id=…) the purchase shows as pending until Stripe's
 * webhook reaches the authority, which credits the pool; this page polls the purchases meanwhile.
 * When payments are off it says so, and how an operator adds credits. Uses console.js's helpers. */
(function () {
  "use strict";

  const $ = (selector) => document.querySelector(selector);
  const POLL_MS = 1500;
  const POLL_FOR_MS = 10 * 60 * 1000;
  const STATUS_TEXT = { pending: "pending (waiting for Stripe)", paid: "paid", partially_refunded: "partly refunded",
    refunded: "refunded", expired: "expired (not paid)" };
  let options = null;
  let last = { choice: null, id: null };

  /** One request id per purchase the user means: a double click or a retry reuses it (one Stripe session). */
  function requestIdFor(choice) {
    if (choice !== last.choice) {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      last = { choice, id: "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("") };
    }
    return last.id;
  }

  function money(amount, currency) {
    return `${amount} ${String(currency).toUpperCase()}`;
  }

  function showOptions(c) {
    const off = $("#buy-off");
    const form = $("#buy-form");
    off.hidden = options.enabled;
    form.hidden = !options.enabled;
    for (const node of document.querySelectorAll("[data-payments]")) node.hidden = !options.enabled;
    if (!options.enabled) {
      off.textContent = options.message;
      $("#buy-price").textContent = "";
      return;
    }
    $("#buy-packs").replaceChildren(...options.packs.map((pack, index) => c.el("button", {
      type: "button", "data-pack": index, text: `${c.credits(pack.credits)} credits · ${money(pack.amount, options.currency)}`,
      onclick: (event) => buy(c, event.target, { pack: index }) })));
    $("#buy-price").textContent = `${options.credits_per_unit} credits per ${options.currency.toUpperCase()}; ` +
      `any amount from ${c.credits(options.min)} to ${c.credits(options.max)} credits ` +
      `(a multiple of ${c.credits(options.step)}). You pay on Stripe's page; the credits arrive when Stripe ` +
      "confirms the payment.";
  }

  function buy(c, control, choice) {
    return c.act(control, async () => {
      const body = { ...choice, request_id: requestIdFor(JSON.stringify(choice)) };
      const started = await c.api("/api/v1/console/org/checkout", { method: "POST", body });
      c.say("Taking you to Stripe to pay…");
      window.location.assign(started.url);
    });
  }

  async function loadPurchases(c) {
    const data = await c.api("/api/v1/console/org/purchases");
    c.fillTable($("#purchases-table"), data.data, (p) => c.el("tr", { "data-session": p.session_id },
      c.el("td", { text: c.when(p.created_at) }), c.el("td", { class: "num", text: c.credits(p.credits) }),
      c.el("td", { class: "num", text: money(p.amount, p.currency) }),
      c.el("td", {}, c.el("span", { class: `badge ${p.status === "paid" ? "ok" : p.status === "pending" ? "warn" : "bad"}`,
        "data-status": p.status, text: STATUS_TEXT[p.status] || p.status })),
      c.el("td", { text: p.created_by }), c.el("td", {}, c.el("code", { text: p.session_id }))));
    return data.data;
  }

  /** Back from Stripe: the purchase stays pending until the webhook lands; poll, then refresh the pool. */
  async function followReturn(c) {
    const params = new URLSearchParams(window.location.search);
    const outcome = params.get("checkout");
    if (!outcome) return;
    const notice = $("#checkout-notice");
    const sessionId = params.get("session_id") || "";
    window.history.replaceState(null, "", window.location.pathname + window.location.hash);
    notice.hidden = false;
    if (outcome !== "success") {
      notice.textContent = "Checkout cancelled: nothing was charged.";
      return;
    }
    notice.textContent = "Payment sent. The credits are added when Stripe confirms it (usually seconds).";
    notice.focus();
    const deadline = Date.now() + POLL_FOR_MS;
    while (Date.now() < deadline) {
      const purchase = (await loadPurchases(c)).find((p) => p.session_id === sessionId);
      if (purchase && purchase.status !== "pending") {
        notice.textContent = purchase.status === "paid"
          ? `Payment confirmed: ${c.credits(purchase.credits)} credits were added to the pool.`
          : `This purchase is ${STATUS_TEXT[purchase.status] || purchase.status}.`;
        await c.refreshAll();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    notice.textContent = "Stripe has not confirmed the payment yet; the purchase stays pending below.";
  }

  window.creditConsole.onStart((me) => {
    const c = window.creditConsole;
    if (me.view !== "admin") return;
    c.act(null, async () => {
      options = await c.api("/api/v1/console/payments");
      showOptions(c);
      if (options.enabled) {
        await loadPurchases(c);
        await followReturn(c);
      }
    });
  });

  $("#buy-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const c = window.creditConsole;
    buy(c, event.target.querySelector("button[type=submit]"), { credits: event.target.elements.credits.value.trim() });
  });
})();
