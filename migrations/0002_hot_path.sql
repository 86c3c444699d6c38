-- The hot path as server-side functions: each RPC of CreditAuthority is one
-- round trip and one transaction. Locks are always taken in the same order —
-- reservation row, then account row — so concurrent calls cannot deadlock.
-- Outcomes are returned as codes; the service maps them to gRPC statuses.

-- Funding resolution (DESIGN.md): explicit org → must be a member; else the
-- default org, else the org joined first; else the individual balance.
-- outcome: 'org' | 'individual' | 'unknown_user' | 'unknown_org' | 'not_member'
CREATE FUNCTION credit_resolve_funding(p_user_id TEXT, p_org_id TEXT,
                                       OUT outcome TEXT, OUT org_id TEXT)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_org_id <> '' THEN
        PERFORM 1 FROM org_members m WHERE m.org_id = p_org_id AND m.user_id = p_user_id;
        IF FOUND THEN
            outcome := 'org'; org_id := p_org_id; RETURN;
        END IF;
        PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
        IF NOT FOUND THEN outcome := 'unknown_user'; RETURN; END IF;
        PERFORM 1 FROM organizations o WHERE o.org_id = p_org_id;
        IF NOT FOUND THEN outcome := 'unknown_org'; RETURN; END IF;
        outcome := 'not_member'; RETURN;
    END IF;
    SELECT m.org_id INTO org_id FROM org_members m
     WHERE m.user_id = p_user_id ORDER BY m.is_default DESC, m.join_seq LIMIT 1;
    IF FOUND THEN outcome := 'org'; RETURN; END IF;
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
    IF NOT FOUND THEN outcome := 'unknown_user'; RETURN; END IF;
    outcome := 'individual';
END $$;

-- Balance of the resolved account; a member without an allocation, or a user
-- without individual credits, has zeros (never a fallback elsewhere).
CREATE FUNCTION credit_balance(p_user_id TEXT, p_org_id TEXT,
                               OUT outcome TEXT, OUT funding_kind TEXT, OUT org_id TEXT,
                               OUT limit_mc BIGINT, OUT used_mc BIGINT, OUT held_mc BIGINT)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT r.outcome, r.org_id INTO outcome, org_id FROM credit_resolve_funding(p_user_id, p_org_id) r;
    limit_mc := 0; used_mc := 0; held_mc := 0;
    IF outcome = 'org' THEN
        funding_kind := 'org';
        SELECT a.limit_mc, a.used_mc, a.held_mc INTO limit_mc, used_mc, held_mc
          FROM allocations a WHERE a.org_id = credit_balance.org_id AND a.user_id = p_user_id;
    ELSIF outcome = 'individual' THEN
        funding_kind := 'individual';
        SELECT b.limit_mc, b.used_mc, b.held_mc INTO limit_mc, used_mc, held_mc
          FROM individual_balances b WHERE b.user_id = p_user_id;
    ELSE
        RETURN;
    END IF;
    outcome := 'ok';
    limit_mc := coalesce(limit_mc, 0); used_mc := coalesce(used_mc, 0); held_mc := coalesce(held_mc, 0);
END $$;

-- Reserve: places a hold iff limit − used − held >= amount, in one conditional
-- UPDATE of the account row. Idempotent per (caller, request_id).
-- outcome: 'ok' | 'replay' | 'conflict' | 'insufficient' | resolution errors.
-- A concurrent duplicate that slipped past the first lookup raises SQLSTATE
-- CR409; the caller retries and then sees 'replay' or 'conflict'.
CREATE FUNCTION credit_reserve(p_caller TEXT, p_request_id TEXT, p_request_hash BYTEA,
                               p_user_id TEXT, p_org_id TEXT, p_amount_mc BIGINT,
                               p_ttl_seconds INT, p_service_type TEXT, p_service_name TEXT,
                               p_metadata JSONB,
                               OUT outcome TEXT, OUT reservation_id UUID, OUT funding_kind TEXT,
                               OUT org_id TEXT, OUT reserved_mc BIGINT, OUT available_mc BIGINT,
                               OUT expires_at TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
DECLARE
    v_hash BYTEA;
    v_user TEXT;
BEGIN
    SELECT r.reservation_id, r.request_hash, r.funding_kind, r.org_id, r.amount_mc, r.expires_at, r.user_id
      INTO reservation_id, v_hash, funding_kind, org_id, reserved_mc, expires_at, v_user
      FROM reservations r WHERE r.caller = p_caller AND r.request_id = p_request_id;
    IF FOUND THEN
        outcome := CASE WHEN v_hash = p_request_hash THEN 'replay' ELSE 'conflict' END;
        SELECT b.limit_mc - b.used_mc - b.held_mc INTO available_mc
          FROM credit_balance(v_user, coalesce(org_id, '')) b;
        RETURN;
    END IF;

    SELECT f.outcome, f.org_id INTO outcome, org_id FROM credit_resolve_funding(p_user_id, p_org_id) f;
    IF outcome NOT IN ('org', 'individual') THEN RETURN; END IF;
    funding_kind := outcome;

    IF funding_kind = 'org' THEN
        UPDATE allocations a SET held_mc = a.held_mc + p_amount_mc
         WHERE a.org_id = credit_reserve.org_id AND a.user_id = p_user_id
           AND a.limit_mc - a.used_mc - a.held_mc >= p_amount_mc
        RETURNING a.limit_mc - a.used_mc - a.held_mc INTO available_mc;
    ELSE
        UPDATE individual_balances b SET held_mc = b.held_mc + p_amount_mc
         WHERE b.user_id = p_user_id AND b.limit_mc - b.used_mc - b.held_mc >= p_amount_mc
        RETURNING b.limit_mc - b.used_mc - b.held_mc INTO available_mc;
    END IF;
    IF NOT FOUND THEN
        outcome := 'insufficient';
        SELECT b.limit_mc - b.used_mc - b.held_mc INTO available_mc
          FROM credit_balance(p_user_id, coalesce(org_id, '')) b;
        RETURN;
    END IF;

    expires_at := now() + make_interval(secs => p_ttl_seconds);
    INSERT INTO reservations AS r (reservation_id, caller, request_id, request_hash, user_id,
                                   funding_kind, org_id, amount_mc, service_type, service_name,
                                   metadata, expires_at)
    VALUES (gen_random_uuid(), p_caller, p_request_id, p_request_hash, p_user_id,
            funding_kind, org_id, p_amount_mc, p_service_type, p_service_name,
            p_metadata, expires_at)
    ON CONFLICT (caller, request_id) DO NOTHING
    RETURNING r.reservation_id INTO reservation_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'concurrent reserve with the same request_id' USING ERRCODE = 'CR409';
    END IF;

    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id)
    VALUES (CASE WHEN funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
            org_id, p_user_id, 'hold', p_amount_mc, reservation_id);
    reserved_mc := p_amount_mc;
    outcome := 'ok';
END $$;

-- Moves an account's used and held by the given deltas; returns available.
CREATE FUNCTION credit_apply_to_account(p_funding_kind TEXT, p_org_id TEXT, p_user_id TEXT,
                                        p_delta_used BIGINT, p_delta_held BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_available BIGINT;
BEGIN
    IF p_funding_kind = 'org' THEN
        UPDATE allocations a SET used_mc = a.used_mc + p_delta_used, held_mc = a.held_mc + p_delta_held,
                                 updated_at = now()
         WHERE a.org_id = p_org_id AND a.user_id = p_user_id
        RETURNING a.limit_mc - a.used_mc - a.held_mc INTO v_available;
    ELSE
        UPDATE individual_balances b SET used_mc = b.used_mc + p_delta_used, held_mc = b.held_mc + p_delta_held,
                                         updated_at = now()
         WHERE b.user_id = p_user_id
        RETURNING b.limit_mc - b.used_mc - b.held_mc INTO v_available;
    END IF;
    RETURN v_available;
END $$;

-- Commit: charges the actual amount (even above the hold: flagged overrun;
-- even after expiry: flagged late), removes the hold, writes the attribution
-- row and the ledger entry. A repeated Commit with the same amount replays.
-- outcome: 'ok' | 'replay' | 'not_found' | 'finalized'
CREATE FUNCTION credit_commit(p_caller TEXT, p_reservation_id UUID, p_amount_mc BIGINT, p_metadata JSONB,
                              OUT outcome TEXT, OUT charged_mc BIGINT, OUT available_mc BIGINT,
                              OUT overrun BOOLEAN, OUT late BOOLEAN, OUT funding_kind TEXT,
                              OUT org_id TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r reservations%ROWTYPE;
    v_hold_removed BIGINT;
BEGIN
    SELECT * INTO r FROM reservations WHERE reservation_id = p_reservation_id AND caller = p_caller
       FOR UPDATE;
    IF NOT FOUND THEN outcome := 'not_found'; RETURN; END IF;
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

    UPDATE reservations SET status = 'committed', finalized_at = now(), charged_mc = p_amount_mc,
                            overrun = credit_commit.overrun, late = credit_commit.late
     WHERE reservation_id = r.reservation_id;
    available_mc := credit_apply_to_account(r.funding_kind, r.org_id, r.user_id, p_amount_mc, -v_hold_removed);
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

-- Release: voids a held reservation. Releasing an already released or
-- expired reservation replays; releasing a committed one is refused.
-- outcome: 'ok' | 'replay' | 'not_found' | 'finalized'
CREATE FUNCTION credit_release(p_caller TEXT, p_reservation_id UUID, p_reason TEXT)
RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    r reservations%ROWTYPE;
BEGIN
    SELECT * INTO r FROM reservations WHERE reservation_id = p_reservation_id AND caller = p_caller
       FOR UPDATE;
    IF NOT FOUND THEN RETURN 'not_found'; END IF;
    IF r.status = 'committed' THEN RETURN 'finalized'; END IF;
    IF r.status <> 'held' THEN RETURN 'replay'; END IF;

    UPDATE reservations SET status = 'released', finalized_at = now(), release_reason = p_reason
     WHERE reservation_id = r.reservation_id;
    PERFORM credit_apply_to_account(r.funding_kind, r.org_id, r.user_id, 0, -r.amount_mc);
    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id, note)
    VALUES (CASE WHEN r.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
            r.org_id, r.user_id, 'release', -r.amount_mc, r.reservation_id, p_reason);
    RETURN 'ok';
END $$;

-- Expiry: releases up to p_limit holds whose TTL has passed. Several
-- replicas may sweep at once: SKIP LOCKED keeps them off each other's rows.
-- All picked reservations are locked first, then the accounts in a fixed
-- order, one UPDATE per account — the same order Commit and Release use.
CREATE FUNCTION credit_expire_holds(p_limit INT) RETURNS INT
LANGUAGE plpgsql AS $$
DECLARE
    v_kinds TEXT[]; v_orgs TEXT[]; v_users TEXT[]; v_totals BIGINT[];
    v_count INT;
BEGIN
    WITH picked AS (
        SELECT reservation_id FROM reservations
         WHERE status = 'held' AND expires_at <= now()
         ORDER BY expires_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), expired AS (
        UPDATE reservations r SET status = 'expired', finalized_at = now()
          FROM picked p WHERE r.reservation_id = p.reservation_id
        RETURNING r.reservation_id, r.funding_kind, r.org_id, r.user_id, r.amount_mc
    ), entries AS (
        INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id)
        SELECT CASE WHEN e.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
               e.org_id, e.user_id, 'expiry', -e.amount_mc, e.reservation_id
          FROM expired e
    ), per_account AS (
        SELECT e.funding_kind, e.org_id, e.user_id, sum(e.amount_mc)::BIGINT AS total, count(*) AS n
          FROM expired e GROUP BY 1, 2, 3
    )
    SELECT array_agg(a.funding_kind ORDER BY a.funding_kind, a.org_id, a.user_id),
           array_agg(a.org_id ORDER BY a.funding_kind, a.org_id, a.user_id),
           array_agg(a.user_id ORDER BY a.funding_kind, a.org_id, a.user_id),
           array_agg(a.total ORDER BY a.funding_kind, a.org_id, a.user_id),
           coalesce(sum(a.n), 0)
      INTO v_kinds, v_orgs, v_users, v_totals, v_count
      FROM per_account a;
    FOR i IN 1 .. coalesce(array_length(v_kinds, 1), 0) LOOP
        PERFORM credit_apply_to_account(v_kinds[i], v_orgs[i], v_users[i], 0, -v_totals[i]);
    END LOOP;
    RETURN v_count;
END $$;
