-- Expiry: releases up to p_limit holds whose TTL has passed. Several
-- replicas may sweep at once: SKIP LOCKED keeps them off each other's rows.
-- All picked reservations are locked first, then the rate_limits rows they
-- were counted against (limit_id order; each gets its holds back), then the
-- accounts in the global order (credit_account_lock_key), one UPDATE each.
-- History: 0002; enable_seqscan = off since 0007; the lock key since 0009;
-- rate limits since 0013.
CREATE OR REPLACE FUNCTION credit_expire_holds(p_limit INT) RETURNS INT
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_kinds TEXT[]; v_orgs TEXT[]; v_users TEXT[]; v_totals BIGINT[];
    v_count INT;
    v_limits rate_limits[];
    v_expired UUID[];
    v_res reservations%ROWTYPE;
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
    SELECT array_agg(a.funding_kind ORDER BY credit_account_lock_key(a.funding_kind, a.org_id, a.user_id)),
           array_agg(a.org_id ORDER BY credit_account_lock_key(a.funding_kind, a.org_id, a.user_id)),
           array_agg(a.user_id ORDER BY credit_account_lock_key(a.funding_kind, a.org_id, a.user_id)),
           array_agg(a.total ORDER BY credit_account_lock_key(a.funding_kind, a.org_id, a.user_id)),
           coalesce(sum(a.n), 0),
           (SELECT array_agg(e.reservation_id) FROM expired e)
      INTO v_kinds, v_orgs, v_users, v_totals, v_count, v_expired
      FROM per_account a;

    -- The rate limits the expired holds were counted against (none for most).
    v_limits := credit_limits_lock('{}', (SELECT array_agg(DISTINCT id) FROM reservations r, unnest(r.limit_ids) id
                                          WHERE r.reservation_id = ANY(v_expired)));
    IF v_limits IS NOT NULL THEN
        FOR v_res IN SELECT * FROM reservations x WHERE x.reservation_id = ANY(v_expired) AND x.limit_ids <> '{}' LOOP
            FOR i IN 1 .. array_length(v_limits, 1) LOOP
                IF (v_limits[i]).limit_id = ANY(v_res.limit_ids) THEN
                    v_limits[i] := credit_limit_finish(v_limits[i], 'expiry', true, v_res.created_at, v_res.amount_mc,
                                                       0, v_res.estimated_tokens, NULL, clock_timestamp());
                END IF;
            END LOOP;
        END LOOP;
        PERFORM credit_limits_save(v_limits);
    END IF;

    FOR i IN 1 .. coalesce(array_length(v_kinds, 1), 0) LOOP
        PERFORM credit_apply_to_account(v_kinds[i], v_orgs[i], v_users[i], 0, -v_totals[i]);
    END LOOP;
    RETURN v_count;
END $$;
