-- The batched hot path: one transaction for many concurrent Reserve, Commit
-- and Release operations of one authority process (group commit). kinds[i] is
-- 'reserve', 'commit' or 'release'; the other arrays hold each operation's
-- arguments (unused ones NULL). Lock order is the global one: the reservation
-- rows (sorted), then accounts by credit_account_lock_key, arrival order
-- within an account; each account is written once per batch. Rate limits: the
-- rate_limits rows of every operation are locked after the reservation rows
-- and before the accounts (limit_id order), worked on in memory (lim) and
-- written back once at the end; a Reserve a limit refuses is 'rate_limited'
-- (limit_info: the refusal); on 'ok', limit_status is what is left of the
-- per-minute limits (credit_limit_try's status array).
-- History: 0004; one write per account 0006; key lookups and enable_seqscan =
-- off 0007; credit_account_lock_key 0009; 'out_of_range' 0010; rate limits 0013;
-- limit_status as an array 0014; the attribution row names the caller 0015.
CREATE OR REPLACE FUNCTION credit_batch(kinds TEXT[], callers TEXT[], request_ids TEXT[], hashes BYTEA[],
                                        user_ids TEXT[], org_ids TEXT[], amounts BIGINT[], ttls INT[],
                                        service_types TEXT[], service_names TEXT[], metadatas JSONB[],
                                        reservation_ids UUID[], reasons TEXT[], api_key_ids TEXT[], tokens BIGINT[])
RETURNS TABLE (idx INT, outcome TEXT, reservation_id UUID, funding_kind TEXT, org_id TEXT,
               amount_mc BIGINT, available_mc BIGINT, expires_at TIMESTAMPTZ, status TEXT,
               overrun BOOLEAN, late BOOLEAN, limit_info JSONB, limit_status BIGINT[])
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    n INT := coalesce(array_length(kinds, 1), 0);
    -- each operation's account: funding kind (or resolution outcome), org, user, and lock order key
    acct_kinds TEXT[] := array_fill(''::TEXT, ARRAY[n]);
    acct_orgs TEXT[] := array_fill(NULL::TEXT, ARRAY[n]);
    acct_users TEXT[] := array_fill(''::TEXT, ARRAY[n]);
    lock_keys BYTEA[] := array_fill(''::BYTEA, ARRAY[n]);
    i INT;
    v_kind TEXT; v_user TEXT;
    -- the account being worked on: its lock key, identity and running figures
    a_key BYTEA := NULL; a_kind TEXT; a_org TEXT; a_user TEXT;
    a_found BOOLEAN := false; a_dirty BOOLEAN := false;
    a_limit BIGINT; a_used BIGINT; a_held BIGINT; a_used0 BIGINT; a_held0 BIGINT;
    res reservations%ROWTYPE;
    v_rid UUID;
    v_outcome TEXT; v_org TEXT; v_hash BYTEA; v_hold BIGINT; v_late BOOLEAN; v_over BOOLEAN;
    -- rate limits: the rows of the whole batch (NULL: none apply), and one operation's share of them
    lim rate_limits[]; lim_keys TEXT[] := '{}'; lim_ids BIGINT[] := '{}'; v_lids BIGINT[];
    v_pos INT[]; v_sub rate_limits[]; v_new rate_limits[]; v_refusal JSONB; v_status BIGINT[]; v_keys TEXT[];
    v_now TIMESTAMPTZ; v_take RECORD;
BEGIN
    -- 1. Where each operation will write (read only, no locks yet).
    FOR i IN 1 .. n LOOP
        v_kind := NULL; v_org := NULL; v_user := NULL;
        IF kinds[i] = 'reserve' THEN
            SELECT f.outcome, f.org_id, user_ids[i] INTO v_kind, v_org, v_user
              FROM credit_resolve_funding(user_ids[i], org_ids[i]) f;
            IF v_kind IN ('org', 'individual') THEN
                lim_keys := lim_keys || credit_limit_keys(v_kind, v_org, v_user, api_key_ids[i]);
            END IF;
        ELSE
            SELECT x.funding_kind, x.org_id, x.user_id, x.limit_ids INTO v_kind, v_org, v_user, v_lids
              FROM reservations x WHERE x.reservation_id = reservation_ids[i];
            lim_ids := lim_ids || coalesce(v_lids, '{}');
        END IF;
        acct_kinds[i] := coalesce(v_kind, ''); acct_orgs[i] := v_org; acct_users[i] := coalesce(v_user, '');
        lock_keys[i] := credit_account_lock_key(acct_kinds[i], acct_orgs[i], acct_users[i]);
    END LOOP;
    -- 2. Reservation rows first, in one fixed order.
    FOR v_rid IN SELECT DISTINCT u.id FROM unnest(reservation_ids) AS u(id)
                  WHERE u.id IS NOT NULL ORDER BY u.id LOOP
        PERFORM 1 FROM reservations x WHERE x.reservation_id = v_rid FOR UPDATE;
    END LOOP;
    -- 2b. Then the rate_limits rows that apply, by limit_id.
    IF lim_keys <> '{}' OR lim_ids <> '{}' THEN
        lim := credit_limits_lock(lim_keys, lim_ids);
        v_now := clock_timestamp();  -- after the locks: later than the time of whoever held them before
    END IF;

    -- 3. Operations by account in the global account order, arrival order within an account.
    FOR i IN SELECT o.i FROM generate_subscripts(kinds, 1) AS o(i)
              ORDER BY lock_keys[o.i], o.i LOOP
        IF a_key IS DISTINCT FROM lock_keys[i] THEN
            -- write back the previous account, then lock and read the next one
            IF a_dirty THEN
                PERFORM credit_apply_to_account(a_kind, a_org, a_user, a_used - a_used0, a_held - a_held0);
            END IF;
            a_key := lock_keys[i]; a_dirty := false; a_found := false;
            a_kind := acct_kinds[i]; a_org := acct_orgs[i]; a_user := acct_users[i];
            IF a_kind = 'org' THEN
                SELECT x.limit_mc, x.used_mc, x.held_mc INTO a_limit, a_used, a_held FROM allocations x
                 WHERE x.org_id = a_org AND x.user_id = a_user FOR UPDATE;
                a_found := FOUND;
            ELSIF a_kind = 'individual' THEN
                SELECT x.limit_mc, x.used_mc, x.held_mc INTO a_limit, a_used, a_held FROM individual_balances x
                 WHERE x.user_id = a_user FOR UPDATE;
                a_found := FOUND;
            END IF;
            IF NOT a_found THEN
                a_limit := 0; a_used := 0; a_held := 0;
            END IF;
            a_used0 := a_used; a_held0 := a_held;  -- written back as one delta per account
        END IF;

        idx := i;
        outcome := NULL; reservation_id := NULL; funding_kind := NULL; org_id := NULL; amount_mc := NULL;
        available_mc := NULL; expires_at := NULL; status := NULL; overrun := NULL; late := NULL;
        limit_info := NULL; limit_status := NULL;

        IF kinds[i] = 'reserve' THEN
            SELECT x.* INTO res FROM reservations x WHERE x.caller = callers[i] AND x.request_id = request_ids[i];
            IF FOUND THEN  -- a retry of an earlier Reserve
                outcome := CASE WHEN res.request_hash = hashes[i] THEN 'replay' ELSE 'conflict' END;
                reservation_id := res.reservation_id; funding_kind := res.funding_kind; org_id := res.org_id;
                amount_mc := res.amount_mc; expires_at := res.expires_at; status := res.status;
                IF res.funding_kind = a_kind AND res.org_id IS NOT DISTINCT FROM a_org AND res.user_id = a_user THEN
                    available_mc := a_limit - a_used - a_held;
                ELSE
                    SELECT b.limit_mc - b.used_mc - b.held_mc INTO available_mc
                      FROM credit_balance(res.user_id, coalesce(res.org_id, '')) b;
                END IF;
            ELSIF a_kind NOT IN ('org', 'individual') THEN
                outcome := a_kind;  -- unknown_user, unknown_org or not_member
            ELSE
                -- the batch's rate_limits rows that apply to this request
                v_pos := '{}'; v_sub := '{}'; v_refusal := NULL; v_status := NULL;
                IF lim IS NOT NULL THEN
                    v_keys := credit_limit_keys(a_kind, a_org, a_user, api_key_ids[i]);
                    FOR j IN 1 .. array_length(lim, 1) LOOP
                        IF (lim[j]).scope_key = ANY(v_keys) THEN
                            v_pos := v_pos || j; v_sub := v_sub || lim[j];
                        END IF;
                    END LOOP;
                    IF v_pos <> '{}' THEN
                        v_take := credit_limits_take(v_sub, v_now, coalesce(tokens[i], 0), amounts[i]);
                        v_new := v_take.rows; v_refusal := v_take.refusal; v_status := v_take.status;
                    END IF;
                END IF;
                IF v_refusal IS NOT NULL THEN
                    outcome := 'rate_limited'; funding_kind := a_kind; org_id := a_org; limit_info := v_refusal;
                ELSIF a_limit - a_used - a_held < amounts[i] THEN
                    outcome := 'insufficient'; funding_kind := a_kind; org_id := a_org;
                    available_mc := a_limit - a_used - a_held;
                ELSE
                    expires_at := now() + make_interval(secs => ttls[i]);
                    INSERT INTO reservations AS r (reservation_id, caller, request_id, request_hash, user_id,
                                                   funding_kind, org_id, amount_mc, service_type, service_name,
                                                   metadata, expires_at, api_key_id, estimated_tokens, limit_ids)
                    VALUES (gen_random_uuid(), callers[i], request_ids[i], hashes[i], a_user, a_kind, a_org,
                            amounts[i], service_types[i], service_names[i], metadatas[i], expires_at,
                            nullif(api_key_ids[i], ''), coalesce(tokens[i], 0),
                            coalesce((SELECT array_agg((x).limit_id) FROM unnest(v_sub) x), '{}'))
                    ON CONFLICT (caller, request_id) DO NOTHING
                    RETURNING r.reservation_id INTO reservation_id;
                    IF reservation_id IS NULL THEN
                        outcome := 'retry';  -- a concurrent Reserve with this request_id won
                        expires_at := NULL;
                    ELSE
                        a_held := a_held + amounts[i]; a_dirty := true;
                        INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id)
                        VALUES (CASE WHEN a_kind = 'org' THEN 'allocation' ELSE 'individual' END,
                                a_org, a_user, 'hold', amounts[i], reservation_id);
                        FOR k IN 1 .. coalesce(array_length(v_pos, 1), 0) LOOP
                            lim[v_pos[k]] := v_new[k];
                        END LOOP;
                        outcome := 'ok'; funding_kind := a_kind; org_id := a_org; amount_mc := amounts[i];
                        available_mc := a_limit - a_used - a_held; status := 'held'; limit_status := v_status;
                    END IF;
                END IF;
            END IF;

        ELSE  -- commit or release of reservation_ids[i], whose row is locked
            SELECT x.* INTO res FROM reservations x WHERE x.reservation_id = reservation_ids[i];
            IF NOT FOUND OR res.caller <> callers[i] THEN
                outcome := 'not_found';
            ELSIF kinds[i] = 'commit' THEN
                funding_kind := res.funding_kind; org_id := res.org_id;
                IF res.status IN ('committed', 'released') THEN
                    outcome := CASE WHEN res.status = 'committed' AND res.charged_mc = amounts[i]
                                    THEN 'replay' ELSE 'finalized' END;
                    amount_mc := res.charged_mc; overrun := res.overrun; late := res.late;
                    available_mc := a_limit - a_used - a_held;
                ELSIF amounts[i] > 4611686018427387903 - a_used THEN
                    outcome := 'out_of_range';  -- the account's used credits would pass the largest total
                    available_mc := a_limit - a_used - a_held;
                ELSE
                    v_hold := CASE WHEN res.status = 'held' THEN res.amount_mc ELSE 0 END;
                    v_late := res.status = 'expired' OR now() > res.expires_at;
                    v_over := amounts[i] > res.amount_mc;
                    UPDATE reservations SET status = 'committed', finalized_at = now(), charged_mc = amounts[i],
                                            overrun = v_over, late = v_late
                     WHERE reservations.reservation_id = res.reservation_id;
                    a_used := a_used + amounts[i]; a_held := a_held - v_hold; a_dirty := true;
                    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_used_mc, delta_held_mc,
                                                reservation_id)
                    VALUES (CASE WHEN res.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
                            res.org_id, res.user_id, 'charge', amounts[i], -v_hold, res.reservation_id);
                    INSERT INTO usage_attribution (reservation_id, org_id, user_id, funding_kind, service_type,
                                                   service_name, credits_used, request_id, request_metadata,
                                                   overrun, late, caller)
                    VALUES (res.reservation_id, res.org_id, res.user_id, res.funding_kind, res.service_type,
                            res.service_name, amounts[i], res.request_id, res.metadata || metadatas[i],
                            v_over, v_late, res.caller);
                    FOR j IN 1 .. coalesce(array_length(lim, 1), 0) LOOP
                        IF (lim[j]).limit_id = ANY(res.limit_ids) THEN
                            lim[j] := credit_limit_finish(lim[j], 'commit', res.status = 'held', res.created_at,
                                                          res.amount_mc, amounts[i], res.estimated_tokens, tokens[i],
                                                          v_now);
                        END IF;
                    END LOOP;
                    outcome := 'ok'; amount_mc := amounts[i]; overrun := v_over; late := v_late;
                    available_mc := a_limit - a_used - a_held;
                END IF;
            ELSE  -- release
                IF res.status = 'committed' THEN
                    outcome := 'finalized';
                ELSIF res.status <> 'held' THEN
                    outcome := 'replay';
                ELSE
                    UPDATE reservations SET status = 'released', finalized_at = now(), release_reason = reasons[i]
                     WHERE reservations.reservation_id = res.reservation_id;
                    a_held := a_held - res.amount_mc; a_dirty := true;
                    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id, note)
                    VALUES (CASE WHEN res.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
                            res.org_id, res.user_id, 'release', -res.amount_mc, res.reservation_id, reasons[i]);
                    FOR j IN 1 .. coalesce(array_length(lim, 1), 0) LOOP
                        IF (lim[j]).limit_id = ANY(res.limit_ids) THEN
                            lim[j] := credit_limit_finish(lim[j], 'release', true, res.created_at, res.amount_mc, 0,
                                                          res.estimated_tokens, NULL, v_now);
                        END IF;
                    END LOOP;
                    outcome := 'ok';
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;

    IF a_dirty THEN
        PERFORM credit_apply_to_account(a_kind, a_org, a_user, a_used - a_used0, a_held - a_held0);
    END IF;
    IF lim IS NOT NULL THEN
        PERFORM credit_limits_save(lim);
    END IF;
END $$;
