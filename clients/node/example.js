#!/usr/bin/env node
'use strict';
// Bills one (pretend) LLM call through the credit authority: Check → Reserve → Commit.
//
//   CREDIT_AUTHORITY_ADDR=127.0.0.1:50051   where the authority listens (default shown)
//   CREDIT_SERVICE_TOKEN=…                  a token with the spend role (required)
//   CREDIT_USER_ID=demo-user                who pays (required)
//   CREDIT_ORG_ID=demo-org                  optional; empty resolves by the funding rule
//   CREDIT_RESERVE_MILLICREDITS=50          worst-case hold (default 50)
//   CREDIT_COMMIT_MILLICREDITS=17           actual amount charged (default 17)
//   CREDIT_REQUEST_ID=…                     idempotency key (default: a random UUID)
//   CREDIT_AUTHORITY_TLS=1                  use TLS with the system roots (default: plaintext)
//
// Prints one JSON object per step on stdout; on failure prints
// {"step", "error": {code, status, message, error_info?}} on stderr and exits 1
// (2 when Check says the amount does not fit).

const crypto = require('node:crypto');
const { CreditAuthorityClient, describeError, toStruct } = require('./credit');

function env(name, fallback) {
  const value = process.env[name];
  if (value !== undefined && value !== '') return value;
  if (fallback === undefined) {
    process.stderr.write(JSON.stringify({ error: `${name} is required` }) + '\n');
    process.exit(1);
  }
  return fallback;
}

function amount(name, fallback) {
  const raw = env(name, String(fallback));
  if (!/^\d+$/.test(raw)) {
    process.stderr.write(JSON.stringify({ error: `${name} must be a non-negative integer, got ${raw}` }) + '\n');
    process.exit(1);
  }
  return raw; // int64 as a decimal string: exact for any amount
}

async function main() {
  const client = new CreditAuthorityClient({
    address: env('CREDIT_AUTHORITY_ADDR', '127.0.0.1:50051'),
    token: env('CREDIT_SERVICE_TOKEN'),
    tls: ['1', 'true', 'yes'].includes(env('CREDIT_AUTHORITY_TLS', '0').toLowerCase()),
  });
  const userId = env('CREDIT_USER_ID');
  const orgId = env('CREDIT_ORG_ID', '');
  const reserveMc = amount('CREDIT_RESERVE_MILLICREDITS', 50);
  const commitMc = amount('CREDIT_COMMIT_MILLICREDITS', 17);
  const requestId = env('CREDIT_REQUEST_ID', crypto.randomUUID());
  const print = (step, result) => process.stdout.write(JSON.stringify({ step, ...result }) + '\n');

  let step = 'check';
  try {
    const check = await client.check({ user_id: userId, org_id: orgId, amount_millicredits: reserveMc });
    print('check', check);
    if (!check.allowed) {
      process.stderr.write(JSON.stringify({ step, error: { status: 'NOT_ALLOWED', message:
        `${reserveMc} millicredits do not fit; ${check.available_millicredits} available` } }) + '\n');
      return 2;
    }

    step = 'reserve';
    const hold = await client.reserve({
      request_id: requestId, user_id: userId, org_id: orgId, amount_millicredits: reserveMc,
      service_type: 'llm_inference', service_name: 'node-example',
      metadata: toStruct({ client: 'clients/node/example.js' }),
    });
    print('reserve', { ...hold, request_id: requestId });

    // … call the model here; on failure: await client.release({ reservation_id: hold.reservation_id, reason: '…' })

    step = 'commit';
    const done = await client.commit({
      reservation_id: hold.reservation_id, amount_millicredits: commitMc,
      metadata: toStruct({ prompt_tokens: 12, completion_tokens: 5 }),
    });
    print('commit', { ...done, reservation_id: hold.reservation_id });
    return 0;
  } catch (error) {
    process.stderr.write(JSON.stringify({ step, error: describeError(error) }) + '\n');
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; }, (error) => {
  process.stderr.write(JSON.stringify({ error: String(error && error.stack || error) }) + '\n');
  process.exitCode = 1;
});
