// A real OpenID Connect provider for the tests (panva/oidc-provider, installed by `make test` from
// package-lock.json): what the console's SSO and the REST API's JWT bearer tokens are checked against.
//
// Environment: OIDC_PORT, OIDC_ISSUER (http://localhost:PORT), OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
// OIDC_REDIRECT_URIS and OIDC_POST_LOGOUT_URIS (the consoles', comma-separated), OIDC_AUDIENCE (the REST
// API's resource indicator) and OIDC_OTHER_AUDIENCE (another resource server). Prints "ready <issuer>"
// when it listens.
//
// Anyone signs in with any login and password (oidc-provider's development interactions); the account id
// (`sub`) is the login, and so is `preferred_username`, which access tokens carry too (the REST service is
// configured with OIDC_USER_CLAIM=preferred_username, as a Keycloak deployment would be). Consent is implied for the console client (a first-party application), as an
// identity provider would be set up for it. Access tokens asked for a resource are JWTs (RS256) for that
// audience, valid 10 minutes; those of the client "<client id>-short" live 1 second (the expiry test).
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};

const port = Number(env('OIDC_PORT'));
const issuer = env('OIDC_ISSUER');
const clientId = env('OIDC_CLIENT_ID');
const audiences = new Set([env('OIDC_AUDIENCE'), env('OIDC_OTHER_AUDIENCE')]);
const shortClientId = `${clientId}-short`;

const signing = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const client = (id) => ({
  client_id: id,
  client_secret: env('OIDC_CLIENT_SECRET'),
  redirect_uris: env('OIDC_REDIRECT_URIS').split(','),
  post_logout_redirect_uris: env('OIDC_POST_LOGOUT_URIS').split(','),
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
});

async function loadExistingGrant(ctx) {
  const { client: rp, session, provider } = ctx.oidc;
  const known = ctx.oidc.result?.consent?.grantId || session.grantIdFor(rp.clientId);
  if (known) return provider.Grant.find(known);
  const grant = new provider.Grant({ clientId: rp.clientId, accountId: session.accountId });
  grant.addOIDCScope('openid profile email');
  grant.addOIDCClaims(['preferred_username', 'name', 'email']);
  for (const audience of audiences) grant.addResourceScope(audience, 'api');
  await grant.save();
  return grant;
}

const provider = new Provider(issuer, {
  clients: [client(clientId), client(shortClientId)],
  jwks: { keys: [{ ...signing, kid: 'test-signing-key', use: 'sig', alg: 'RS256' }] },
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], email: ['email'] },
  scopes: ['openid', 'profile', 'email'],
  loadExistingGrant,
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.test` };
      },
    };
  },
  extraTokenClaims: async (ctx, token) => (token.accountId ? { preferred_username: token.accountId } : undefined),
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, indicator, rp) {
        if (!audiences.has(indicator)) throw new Provider.errors.InvalidTarget();
        return {
          scope: 'api',
          audience: indicator,
          accessTokenFormat: 'jwt',
          accessTokenTTL: rp.clientId === shortClientId ? 1 : 600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

for (const event of ['server_error', 'grant.error', 'authorization.error', 'end_session.error']) {
  provider.on(event, (ctx, error) => console.error(event, error));
}
provider.listen(port, () => console.log(`ready ${issuer}`));
