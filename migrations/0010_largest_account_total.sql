-- The largest account total: 2^62 − 1 millicredits (about 4.6 × 10^12 credits).
--
-- Every amount is bounded (1 … 10^15), but an account's totals were not: a pool
-- topped up, a balance granted or a member charged (overruns are charged in
-- full) past 2^63 − 1 made PostgreSQL raise "numeric value out of range" and the
-- authority answer INTERNAL; in a hot-path batch every caller of the batch got
-- it. Totals now stop at 2^62 − 1, which also keeps `limit − used − held` inside
-- BIGINT. Top-ups and grants past it are refused by Storage (FAILED_PRECONDITION,
-- nothing written); a Commit past it gets outcome 'out_of_range'
-- (FAILED_PRECONDITION, nothing written, the hold left to its TTL), alone: the
-- other operations of its batch go on.
--
-- credit_apply_to_account is 0002's, refusing (NULL) a used total past the
-- bound; credit_commit is 0007's, applying to the account before writing
-- anything else; credit_batch is 0009's with the same check in its commit branch.

CREATE OR REPLACE FUNCTION credit_apply_to_account(p_funding_kind TEXT, p_org_id TEXT, p_user_id TEXT,
                                                   p_delta_used BIGINT, p_delta_held BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_available BIGINT;
BEGIN
    IF p_funding_kind = 'org' THEN
        UPDATE allocations a SET used_mc = a.used_mc + p_delta_used, held_mc = a.held_mc + p_delta_held,
                                 updated_at = now()
         WHERE a.org_id = p_org_id AND a.user_id = p_user_id
           AND a.used_mc <= 4611686018427387903 - greatest(p_delta_used, 0)
        RETURNING a.limit_mc - a.used_mc - a.held_mc INTO v_available;
    ELSE
        UPDATE individual_balances b SET used_mc = b.used_mc + p_delta_used, held_mc = b.held_mc + p_delta_held,
                                         updated_at = now()
         WHERE b.user_id = p_user_id
           AND b.used_mc <= 4611686018427387903 - greatest(p_delta_used, 0)
        RETURNING b.limit_mc - b.used_mc - b.held_mc INTO v_available;
    END IF;
    RETURN v_available;
END $$;

CREATE OR REPLACE FUNCTION credit_commit(p_caller TEXT, p_reservation_id UUID, p_amount_mc BIGINT, p_metadata JSONB,
                              OUT outcome TEXT, OUT charged_mc BIGINT, OUT available_mc BIGINT,
                              OUT overrun BOOLEAN, OUT late BOOLEAN, OUT funding_kind TEXT,
                              OUT org_id TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r reservations%ROWTYPE;
    v_hold_removed BIGINT;
BEGIN
    SELECT * INTO r FROM reservations WHERE reservation_id = p_reservation_id FOR UPDATE;
    IF NOT FOUND OR r.caller <> p_caller THEN outcome := 'not_found'; RETURN; END IF;
    funding_kind := r.funding_kind; org_id := r.org_id;

    IF r.status = 'committed' OR r.status = 'released' THEN
        outcome := CASE WHEN r.status = 'committed' AND r.charged_mc = p_amount_mc
                        THEN 'replay' ELSE 'finalized' END;
        charged_mc := r.charged_mc; overrun := r.overrun; late := r.late;
        SELECT b.limit_mc - b.used_mc - b.held_mc INTO available_mc
          FROM credit_balance(r.user_id, coalesce(r.org_id, '')) b;
        RETURN;
    END IF;

    -- 'held' (possibly past its expiry, not yet swept) or 'expired' (hold already gone).
    v_hold_removed := CASE WHEN r.status = 'held' THEN r.amount_mc ELSE 0 END;
    late := r.status = 'expired' OR now() > r.expires_at;
    overrun := p_amount_mc > r.amount_mc;
    charged_mc := p_amount_mc;

    -- The account first: it refuses (NULL) a charge that would pass the largest total, before any write.
    available_mc := credit_apply_to_account(r.funding_kind, r.org_id, r.user_id, p_amount_mc, -v_hold_removed);
    IF available_mc IS NULL THEN
        outcome := 'out_of_range'; charged_mc := NULL; overrun := NULL; late := NULL;
        RETURN;
    END IF;
    UPDATE reservations SET status = 'committed', finalized_at = now(), charged_mc = p_amount_mc,
                            overrun = credit_commit.overrun, late = credit_commit.late
     WHERE reservation_id = r.reservation_id;
    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_used_mc, delta_held_mc, reservation_id)
    VALUES (CASE WHEN r.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
            r.org_id, r.user_id, 'charge', p_amount_mc, -v_hold_removed, r.reservation_id);
    INSERT INTO usage_attribution (reservation_id, org_id, user_id, funding_kind, service_type,
                                   service_name, credits_used, request_id, request_metadata,
                                   overrun, late)
    VALUES (r.reservation_id, r.org_id, r.user_id, r.funding_kind, r.service_type, r.service_name,
            p_amount_mc, r.request_id, r.metadata || p_metadata, overrun, late);
    outcome := 'ok';
END $$;

CREATE OR REPLACE FUNCTION credit_batch(kinds TEXT[], callers TEXT[], request_ids TEXT[], hashes BYTEA[],
                                        user_ids TEXT[], org_ids TEXT[], amounts BIGINT[], ttls INT[],
                                        service_types TEXT[], service_names TEXT[], metadatas JSONB[],
                                        reservation_ids UUID[], reasons TEXT[])
RETURNS TABLE (idx INT, outcome TEXT, reservation_id UUID, funding_kind TEXT, org_id TEXT,
               amount_mc BIGINT, available_mc BIGINT, expires_at TIMESTAMPTZ, status TEXT,
               overrun BOOLEAN, late BOOLEAN)
LANGUAGE plpgsql AS $$
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
BEGIN
    -- 1. Where each operation will write (read only, no locks yet).
    FOR i IN 1 .. n LOOP
        v_kind := NULL; v_org := NULL; v_user := NULL;
        IF kinds[i] = 'reserve' THEN
            SELECT f.outcome, f.org_id, user_ids[i] INTO v_kind, v_org, v_user
              FROM credit_resolve_funding(user_ids[i], org_ids[i]) f;
        ELSE
            SELECT x.funding_kind, x.org_id, x.user_id INTO v_kind, v_org, v_user
              FROM reservations x WHERE x.reservation_id = reservation_ids[i];
        END IF;
        acct_kinds[i] := coalesce(v_kind, ''); acct_orgs[i] := v_org; acct_users[i] := coalesce(v_user, '');
        lock_keys[i] := credit_account_lock_key(acct_kinds[i], acct_orgs[i], acct_users[i]);
    END LOOP;
    -- 2. Reservation rows first, in one fixed order.
    FOR v_rid IN SELECT DISTINCT u.id FROM unnest(reservation_ids) AS u(id)
                  WHERE u.id IS NOT NULL ORDER BY u.id LOOP
        PERFORM 1 FROM reservations x WHERE x.reservation_id = v_rid FOR UPDATE;
    END LOOP;

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
            ELSIF a_limit - a_used - a_held < amounts[i] THEN
                outcome := 'insufficient'; funding_kind := a_kind; org_id := a_org;
                available_mc := a_limit - a_used - a_held;
            ELSE
                expires_at := now() + make_interval(secs => ttls[i]);
                INSERT INTO reservations AS r (reservation_id, caller, request_id, request_hash, user_id,
                                               funding_kind, org_id, amount_mc, service_type, service_name,
                                               metadata, expires_at)
                VALUES (gen_random_uuid(), callers[i], request_ids[i], hashes[i], a_user, a_kind, a_org,
                        amounts[i], service_types[i], service_names[i], metadatas[i], expires_at)
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
                    outcome := 'ok'; funding_kind := a_kind; org_id := a_org; amount_mc := amounts[i];
                    available_mc := a_limit - a_used - a_held; status := 'held';
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
                                                   overrun, late)
                    VALUES (res.reservation_id, res.org_id, res.user_id, res.funding_kind, res.service_type,
                            res.service_name, amounts[i], res.request_id, res.metadata || metadatas[i],
                            v_over, v_late);
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
                    outcome := 'ok';
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;

    IF a_dirty THEN
        PERFORM credit_apply_to_account(a_kind, a_org, a_user, a_used - a_used0, a_held - a_held0);
    END IF;
END $$;

ALTER FUNCTION credit_commit(TEXT, UUID, BIGINT, JSONB) SET enable_seqscan = off;
ALTER FUNCTION credit_batch(TEXT[], TEXT[], TEXT[], BYTEA[], TEXT[], TEXT[], BIGINT[], INT[], TEXT[], TEXT[],
                            JSONB[], UUID[], TEXT[]) SET enable_seqscan = off;
