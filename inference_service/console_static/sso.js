/* Sign-in through the identity provider (README, "Signing in"), next to console.js's API-key sign-in.
 * GET /api/v1/console/sso says whether the server offers it: then the sign-in panel shows
 * "Sign in with <provider>" (a link to /auth/oidc/login, which sends the browser to the provider). Back
 * from the provider, the session is an HttpOnly cookie this script never sees: when the server says the
 * session is signed in, the console starts on it; a failed sign-in's reason is shown once. Sign-out of a
 * session clears it on the server (POST /api/v1/console/sso/sign-out), then ends the provider's session
 * at its end_session_endpoint, which sends the browser back to the console. */
(function () {
  "use strict";

  const c = window.creditConsole;
  const $ = (selector) => document.querySelector(selector);
  let signedInWith = null;

  document.addEventListener("console:started", (event) => { signedInWith = event.detail.signed_in_with; });
  if (c.me()) signedInWith = c.me().signed_in_with;

  $("#sign-out").addEventListener("click", () => {
    if (signedInWith !== "session") return;
    signedInWith = null;
    c.act(null, async () => {
      const done = await c.api("/api/v1/console/sso/sign-out", { method: "POST", body: {} });
      if (done.end_session_url) window.location.assign(done.end_session_url);
    });
  });

  async function offer() {
    const response = await fetch("/api/v1/console/sso");
    const sso = response.ok ? await response.json() : null;
    if (!sso || !sso.enabled) return;
    const link = $("#sso-sign-in");
    link.textContent = `Sign in with ${sso.provider}`;
    link.href = sso.login_url;
    $("#sso").hidden = false;
    if (sso.error) c.fail(sso.error);
    if (sso.signed_in) await c.startSession();
  }

  offer().catch((error) => c.fail(error.message));
})();
