"""The mutation gate's list: deliberate breakages of the money path, and the tests that must catch each.

A mutant replaces exact text (which must occur exactly once) in a scratch copy of
the checkout; the gate runs the named tests there and the mutant must make them
fail. SQL mutants change the live definition of a function (its file in
migrations/functions/, which the runner applies after the numbered history: a
fresh test database is migrated from the copy).
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH = "migrations/functions/credit_batch.sql"
SWEEPER = "migrations/functions/credit_expire_holds.sql"
SINGLE = "migrations/functions/credit_commit.sql"
RELEASE = "migrations/functions/credit_release.sql"
RESERVE_OP = "migrations/functions/credit_reserve_op.sql"
FUNDING = "migrations/functions/credit_resolve_funding.sql"
LIMIT_TRY = "migrations/functions/credit_limit_try.sql"
LIMIT_FINISH = "migrations/functions/credit_limit_finish.sql"
METERING = "inference_service/metering.py"
CLIENT = "inference_service/authority_client.py"
INTEGRITY = "tests/inference/test_billing_integrity.py"
RATE_LIMITS_REST = "tests/inference/test_rate_limits_rest.py"
BUDGET = "tests/inference/test_budget_controls.py"
COMMIT_FAULTS = "tests/faults/test_commit_faults.py"
PLATFORM_SCOPE = "tests/test_platform_credentials.py"
PLATFORM_ROTATION = "tests/test_platform_rotation.py"
KEY_EXPIRY = "tests/test_api_key_expiry.py"
READ_POOL = "tests/test_read_pool.py"
MODES = "inference_service/metering_modes.py"
OTHER_MODES = "tests/inference/test_other_modes.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (exact original text, replacement)
    tests: tuple[str, ...]
    function: str = ""  # for SQL: the function changed; the gate checks `path` is its live definition


def mutant(name: str, what: str, path: str, original: str, replacement: str, *tests: str,
           function: str = "") -> Mutant:
    return Mutant(name, what, path, ((original, replacement),), tests, function)


MUTANTS: tuple[Mutant, ...] = (
    # ---- SQL: the hot path ----
    Mutant("batch-no-for-update", "credit_batch reads accounts without FOR UPDATE", BATCH, (
        ("WHERE x.org_id = a_org AND x.user_id = a_user FOR UPDATE;", "WHERE x.org_id = a_org AND x.user_id = a_user;"),
        ("WHERE x.user_id = a_user FOR UPDATE;", "WHERE x.user_id = a_user;")),
        ("tests/test_concurrent_reserves.py",), "credit_batch"),
    mutant("batch-replay-finalized", "credit_batch answers a repeated Commit 'finalized' instead of replaying it",
           BATCH, """outcome := CASE WHEN res.status = 'committed' AND res.charged_mc = amounts[i]
                                    THEN 'replay' ELSE 'finalized' END;""", "outcome := 'finalized';",
           "tests/faults/test_authority_killed.py", function="credit_batch"),
    mutant("batch-reserve-ignores-limit", "credit_batch grants a hold whatever is available", BATCH,
           "ELSIF a_limit - a_used - a_held < amounts[i] THEN", "ELSIF a_limit - a_used - a_held < 0 THEN",
           "tests/test_concurrent_reserves.py", function="credit_batch"),
    mutant("batch-lock-order-reversed", "credit_batch locks accounts in the reverse of the global order", BATCH,
           "ORDER BY lock_keys[o.i], o.i LOOP", "ORDER BY lock_keys[o.i] DESC, o.i LOOP",
           "tests/test_lock_order.py", function="credit_batch"),
    mutant("sweeper-never-expires", "the sweeper expires nothing within a day", SWEEPER,
           "WHERE status = 'held' AND expires_at <= now()",
           "WHERE status = 'held' AND expires_at <= now() - interval '1 day'", "tests/test_two_phase.py",
           function="credit_expire_holds"),
    mutant("commit-replay-finalized", "credit_commit answers a repeated Commit 'finalized'", SINGLE,
           """outcome := CASE WHEN r.status = 'committed' AND r.charged_mc = p_amount_mc
                        THEN 'replay' ELSE 'finalized' END;""", "outcome := 'finalized';",
           "tests/test_two_phase.py", function="credit_commit"),
    mutant("commit-skips-ledger", "credit_commit writes no ledger entry for the charge", SINGLE,
           "    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_used_mc, delta_held_mc, "
           "reservation_id)\n    VALUES (CASE WHEN r.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,\n"
           "            r.org_id, r.user_id, 'charge', p_amount_mc, -v_hold_removed, r.reservation_id);", "",
           "tests/test_two_phase.py", "tests/test_stateful.py", function="credit_commit"),
    mutant("commit-never-late", "credit_commit never flags a late commit", SINGLE,
           "late := r.status = 'expired' OR now() > r.expires_at;", "late := false;", "tests/test_two_phase.py",
           function="credit_commit"),
    mutant("commit-never-overrun", "credit_commit never flags an overrun", SINGLE,
           "overrun := p_amount_mc > r.amount_mc;", "overrun := false;", "tests/test_two_phase.py",
           function="credit_commit"),
    mutant("release-keeps-hold", "credit_release leaves the hold on the account", RELEASE,
           "PERFORM credit_apply_to_account(r.funding_kind, r.org_id, r.user_id, 0, -r.amount_mc);",
           "PERFORM credit_apply_to_account(r.funding_kind, r.org_id, r.user_id, 0, 0);", "tests/test_two_phase.py",
           function="credit_release"),
    mutant("reserve-ignores-limit", "credit_reserve_op holds more than is available", RESERVE_OP,
           "AND a.limit_mc - a.used_mc - a.held_mc >= p_amount_mc", "AND a.limit_mc - a.used_mc - a.held_mc >= 0",
           "tests/test_stateful.py", "tests/test_two_phase.py", function="credit_reserve_op"),
    mutant("funding-skips-membership", "an explicit org funds any user, member or not", FUNDING,
           """PERFORM 1 FROM org_members m WHERE m.org_id = p_org_id AND m.user_id = p_user_id;""",
           """PERFORM 1 FROM organizations m WHERE m.org_id = p_org_id;""", "tests/test_funding_resolution.py",
           function="credit_resolve_funding"),
    # ---- SQL: rate limits ----
    mutant("rpm-burst-off-by-one", "a requests-per-minute limit of N admits N + 1 at once", LIMIT_TRY,
           "IF tat - p_now_ns > l.rpm * t THEN", "IF tat - p_now_ns > (l.rpm + 1) * t THEN",
           "tests/test_rate_limits.py", function="credit_limit_try"),
    mutant("parallel-never-given-back", "a finished hold keeps counting against max_parallel", LIMIT_FINISH,
           "l.open_holds := greatest(l.open_holds - 1, 0);", "l.open_holds := l.open_holds;",
           "tests/test_rate_limits.py", function="credit_limit_finish"),
    mutant("tokens-not-corrected", "Commit keeps the estimated tokens in the window, not the real count",
           LIMIT_FINISH, "WHEN 'commit' THEN coalesce(p_tokens, p_estimated_tokens) - p_estimated_tokens",
           "WHEN 'commit' THEN 0", "tests/test_rate_limits.py", function="credit_limit_finish"),
    mutant("batch-limits-not-saved", "a hot-path batch forgets what its Reserves took from the limits", BATCH,
           "        PERFORM credit_limits_save(lim);\n", "", "tests/test_rate_limits.py", function="credit_batch"),
    mutant("batcher-no-max-batch", "the group commit sends the whole queue as one batch, past max_batch",
           "credit_service/storage/batcher.py",
           "batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]",
           "batch, self._queue = self._queue, []", "tests/unit/test_batcher.py"),
    mutant("reserve-no-retry", "a Reserve that lost a same-request_id race is not run again to replay",
           "credit_service/storage/hot_path.py", "for _ in range(5):", "for _ in range(1):",
           "tests/test_concurrent_reserves.py"),
    # ---- Python: money, auth ----
    mutant("money-rounds-down", "provider cost is rounded down to the millicredit", "credit_service/money.py",
           "to_integral_value(rounding=ROUND_CEILING))", 'to_integral_value(rounding="ROUND_FLOOR"))',
           "tests/inference/test_provider_prices.py", "tests/inference/test_chat.py"),
    mutant("role-check-skipped", "an RPC runs whatever the caller's roles", "credit_service/server/rpc.py",
           "if not caller.roles.intersection(roles):", "if False:", "tests/test_auth.py"),
    mutant("key-membership-unchecked", "an org-bound key works after its owner left the org",
           "credit_service/storage/admin.py",
           "OR (m.role IS NOT NULL AND (k.kind = 'user' OR m.role = ANY($2::text[]))))", "OR $2::text[] IS NOT NULL)",
           "tests/test_key_membership.py"),
    mutant("grant-not-idempotent", "two grants with one reference race into the unique index",
           "credit_service/storage/admin.py", "ON CONFLICT (user_id, reference) DO NOTHING RETURNING grant_id",
           "RETURNING grant_id", "tests/test_grant_idempotency.py"),
    # ---- Python: the edge ----
    mutant("edge-no-output-cap", "the provider is not sent the max_tokens the hold paid for", METERING,
           'params["max_tokens"] = estimate.max_tokens', "pass", INTEGRITY),
    mutant("edge-estimate-ignores-tools", "the worst case leaves tools and response_format out",
           "inference_service/billing.py",
           'for name in ("tools", "functions", "tool_choice", "response_format", "stop"):', "for name in ():",
           INTEGRITY),
    mutant("edge-strings-unchecked", "client strings reach metadata unchecked", "inference_service/schemas.py",
           "    if _NOT_PRINTABLE.search(value):", "    if False:", INTEGRITY),
    mutant("edge-cut-stream-ignores-tool-calls", "a cut stream is charged for text only", METERING,
           'self.produced.extend(str(function.get(k) or "") for k in ("name", "arguments"))', "pass", INTEGRITY),
    mutant("edge-left-stream-unsettled", "a stream the client leaves is not settled", METERING,
           """            timer.cancel()
            self.settle(cut=True)""", "            timer.cancel()", INTEGRITY),
    mutant("responses-left-stream-unsettled", "a /responses stream the client leaves is not settled",
           "inference_service/responses_api.py", """            timer.cancel()
            self.settle(cut=True)""", "            timer.cancel()", "tests/inference/test_responses_api.py"),
    mutant("responses-stored-state-accepted", "/responses takes previous_response_id and store: true (and drops "
           "the conversation they name)", "inference_service/responses_schema.py",
           '@field_validator("previous_response_id", "store", "conversation", "background", "prompt")',
           '@field_validator("conversation", "background", "prompt")', "tests/inference/test_rest_bad_input.py"),
    mutant("edge-shared-idempotency-key", "a second request with one Idempotency-Key can take the first's hold",
           METERING, 'metadata={**metadata, "attempt": uuid.uuid4().hex},', "metadata=metadata,", COMMIT_FAULTS),
    mutant("edge-internal-is-final", "a Commit answered INTERNAL is dropped as refused", CLIENT,
           "if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):",
           "if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL):",
           COMMIT_FAULTS),
    mutant("edge-skips-outbox", "a Commit the authority did not take is not kept in the outbox", CLIENT,
           """        self.outbox.add(reservation_id, amount_mc, metadata, tokens)
        log.warning("authority did not take""", """        log.warning("authority did not take""", COMMIT_FAULTS),
    mutant("edge-refused-commit-dropped", "a Commit the authority refused for good is not kept", CLIENT,
           "        self.outbox.refused(reservation_id, amount_mc, metadata, error.code().name, "
           'error.details() or "")', "        pass", COMMIT_FAULTS),
    mutant("edge-no-commit-retry", "a failed Commit is not retried before the outbox", CLIENT,
           "RETRY = RetryPolicy(attempts=4,", "RETRY = RetryPolicy(attempts=1,", COMMIT_FAULTS),
    # ---- Python: embeddings, transcriptions, moderations (issue #18) ----
    mutant("media-embedding-own-count", "an embeddings call is charged our token count, not the provider's usage",
           MODES, "tokens = int(reported) if reported is not None else estimate.counted_tokens",
           "tokens = estimate.counted_tokens", OTHER_MODES),
    mutant("media-moderation-hold-kept", "a moderation's 1-millicredit hold is never released", MODES,
           '        await meter.client.release(hold.reservation_id, "moderation: not billed")\n', "", OTHER_MODES),
    mutant("media-upload-uncounted", "an upload without Content-Length is read past the limit",
           "inference_service/edge.py", "                if size > limit:", "                if False:", OTHER_MODES),
    mutant("media-audio-hold-short", "a transcription's hold pays for the whole seconds below the duration",
           "inference_service/audio.py", "max(math.ceil(most_seconds), 1)",
           "max(int(Decimal(frames) / Decimal(rate)), 1)", OTHER_MODES),
    mutant("media-audio-charge-declared", "a transcription the provider reports no duration for is charged the "
           "header's declared frames (the client's figure), not every second its bytes could play", MODES,
           '        return audio.most_seconds, "file"', '        return audio.duration, "file"', OTHER_MODES),
    mutant("media-embedding-zero-usage", "an embeddings answer without usage (LiteLLM's zeros) is charged 0",
           MODES, "            if reported is not None and reported <= 0:", "            if False:", OTHER_MODES),
    mutant("media-wrong-mode-served", "a catalogue entry is served through another mode's endpoint",
           "inference_service/service.py", "        if entry.mode != mode:", "        if False:",
           "tests/inference/test_rest_bad_input.py"),
    # ---- Python: money in (issue #13) ----
    mutant("mint-check-skipped", "TopUpPool takes the admin role instead of mint: the REST service's token mints",
           "credit_service/server/servicers.py", "    @rpc(Role.MINT, audited=POOL)\n    async def TopUpPool",
           "    @rpc(Role.ADMIN, audited=POOL)\n    async def TopUpPool", "tests/test_money_in_roles.py"),
    mutant("payment-paid-twice", "a paid session's purchase is paid again by every delivery (no status guard)",
           "credit_service/storage/payments.py",
           "WHERE p.status IN ('pending', 'expired') AND p.org_id = EXCLUDED.org_id",
           "WHERE p.org_id = EXCLUDED.org_id", "tests/test_payments.py"),
    mutant("refund-rounds-up", "a refund takes back its share of the credits rounded up, more than was refunded",
           "credit_service/storage/payments.py",
           "taken_mc = purchase.credits_mc * refunded // purchase.amount_minor - purchase.refunded_mc",
           "taken_mc = -(-purchase.credits_mc * refunded // purchase.amount_minor) - purchase.refunded_mc",
           "tests/test_payment_refunds.py"),
    # ---- Python: platform credentials (issue #15) ----
    mutant("platform-named-org-unscoped", "a platform credential's Reserve naming an org outside its scope is not "
           "checked before the hold (only the hold's funding after it)", "credit_service/authority.py",
           """        if org_id:
            scope.require("org", org_id, user_id)
            return org_id""", """        if org_id:
            return org_id""", PLATFORM_SCOPE),
    mutant("platform-resolved-funding-unscoped", "Check/GetBalance/Reserve with no org do not check the resolved "
           "funding against a platform credential's scope", "credit_service/authority.py",
           """        if scope is not None:
            scope.require(balance.funding_kind, balance.org_id, user_id)""", """        if False:
            scope.require(balance.funding_kind, balance.org_id, user_id)""", PLATFORM_SCOPE),
    mutant("platform-closed-rpcs-open", "RPCs not declared open to platform credentials are open to them",
           "credit_service/server/rpc.py", """    if scope is None:
        return PermissionDenied(""", """    if False:
        return PermissionDenied(""", PLATFORM_SCOPE),
    mutant("platform-revoked-still-valid", "a revoked platform credential's secrets still authenticate",
           "credit_service/storage/platforms.py", "WHERE s.secret_hash = $1 AND c.revoked_at IS NULL AND",
           "WHERE s.secret_hash = $1 AND", PLATFORM_ROTATION),
    mutant("platform-cache-never-expires", "a platform credential looked up once is trusted for the process's life",
           "credit_service/auth.py", "if valid is not None and now < valid[1]:", "if valid is not None:",
           PLATFORM_ROTATION),
    mutant("platform-grace-forever", "a rotated-out platform secret stays valid after its grace",
           "credit_service/storage/platforms.py", "(s.valid_until IS NULL OR s.valid_until > now())", "true",
           PLATFORM_ROTATION),
    # ---- Python: rate limits and budgets at the REST edge (issue #14) ----
    mutant("rest-rate-limited-is-402", "a RATE_LIMITED refusal is answered 402 insufficient_credits", CLIENT,
           "if info is not None and info.reason == ratelimits.RATE_LIMITED:", "if False:",
           RATE_LIMITS_REST),
    mutant("rest-no-ratelimit-headers", "a granted call's x-ratelimit-* headers are dropped", METERING,
           "return Hold(reserved, started + ttl - settle_margin(ttl), ratelimit_headers(reserved.rate_limits))",
           "return Hold(reserved, started + ttl - settle_margin(ttl))", RATE_LIMITS_REST),
    mutant("rest-max-cost-ignored", "X-Max-Cost is read but the worst case is held and max_tokens not capped",
           METERING, "        if budget.max_cost_mc is not None:\n            fitted",
           "        if False:\n            fitted", BUDGET),
    mutant("rest-commit-without-tokens", "Commits leave out the real token count: the estimate stays in TPM",
           METERING, "return await self.meter.settle(self.hold, self.billing, charged, metadata, prompt + completion)",
           "return await self.meter.settle(self.hold, self.billing, charged, metadata)", RATE_LIMITS_REST),
    # ---- API keys people manage: expiry and last use (issue #15) ----
    mutant("api-key-expiry-unchecked", "VerifyApiKey's SQL drops the expiry: an expired key stays valid",
           "credit_service/storage/admin.py", "AND (k.expires_at IS NULL OR k.expires_at > now())", "AND true",
           KEY_EXPIRY),
    mutant("api-key-last-used-every-request", "VerifyApiKey writes last_used_at at every use, not once a minute",
           "credit_service/storage/admin.py",
           "AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds')", "", KEY_EXPIRY),
    mutant("rest-key-cache-past-expiry", "the REST service's key cache keeps a key its full window, past its expiry",
           CLIENT, 'if k.HasField("expires_at"):', "if False:", KEY_EXPIRY),
    # ---- Python: the identity provider's access tokens (issue #15) ----
    mutant("jwt-audience-unchecked", "an access token for another audience (another API) is taken as one for this",
           "inference_service/access_tokens.py", 'aud={"essential": True, "value": self._audience},',
           'aud={"essential": True},', "tests/console/test_sso.py"),
    # ---- slow reads on their own pool (issue #16) ----
    mutant("analytics-on-hot-pool", "slow reads (analytics, statements, lists) take the hot path's connections",
           "credit_service/storage/common.py", "async with self.read_pool.acquire() as conn:",
           "async with self.pool.acquire() as conn:", READ_POOL),
    mutant("read-pool-no-statement-timeout", "the read pool's connections run without a statement timeout",
           "credit_service/storage/__init__.py", "command_timeout=command_timeout, max_inactive_connection_lifetime=60,"
           " server_settings=settings,", "command_timeout=command_timeout, max_inactive_connection_lifetime=60,",
           READ_POOL),
    # ---- tenant-facing hardening (issue #17) ----
    mutant("webhook-delivery-address-unchecked", "a delivery trusts every host: a name that resolves to a private "
           "address since it was saved is connected to", "credit_service/jobs/webhook_post.py",
           "await checked_addresses(url, http_hosts, resolver)",
           "await checked_addresses(url, http_hosts | {urlsplit(url).hostname or ''}, resolver)",
           "tests/test_webhook_safety.py"),
    mutant("webhook-secret-stored-plaintext", "SetAlertWebhook stores the signing secret as given, unencrypted",
           "credit_service/storage/alerts.py", "RETURNING *\"\"\", org_id, url, self._box().encrypt(secret))",
           "RETURNING *\"\"\", org_id, url, secret)", "tests/test_secrets_at_rest.py"),
    mutant("history-truncate-allowed", "the money history's guard lets TRUNCATE through (0001's gap again)",
           "migrations/functions/history_is_append_only.sql",
           "    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP",
           "    IF TG_OP = 'TRUNCATE' THEN RETURN NULL; END IF;\n"
           "    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP",
           "tests/test_append_only.py", function="history_is_append_only"),
    mutant("platform-flood-evicts-valid", "a credential seen valid needs a lookup token to be refreshed: a flood of "
           "made-up secrets locks it out", "credit_service/auth.py",
           "            if valid is None and not self._take_token(now):",
           "            if not self._take_token(now):", "tests/test_platform_flood.py"),
    mutant("alert-pass-waits-for-deliveries", "the running alert worker waits for a pass's deliveries: a dripping "
           "receiver holds up every alert that falls due meanwhile", "credit_service/jobs/alert_delivery.py",
           "                    if await self.start_due():", "                    if await self.run_once() is None:",
           "tests/test_webhook_safety.py"),
    # ---- the audit log ----
    mutant("audit-record-after-the-change", "the audit record is not written in the change's transaction (the RPC "
           "layer appends it alone afterwards)", "credit_service/storage/common.py",
           "                await seal_entry(conn, entry)", "                pass", "tests/test_audit_log.py"),
    mutant("audit-key-digest-recorded", "an API key's audit snapshot keeps the secret's digest",
           "credit_service/storage/audit.py", "SELECT to_jsonb(k) - 'secret_hash' - 'last_used_at'",
           "SELECT to_jsonb(k) - 'last_used_at'", "tests/test_audit_log.py"),
    mutant("audit-change-marked-read", "SetAllocation is declared a read: its calls leave no audit record",
           "credit_service/server/servicers.py",
           "@rpc(Role.ADMIN, audited=MEMBER)\n    async def SetAllocation(",
           "@rpc(Role.ADMIN, audited=NOT_A_CHANGE)\n    async def SetAllocation(", "tests/test_audit_log.py"),
)
