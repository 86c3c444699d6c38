-- Release: voids a held reservation. Releasing an already released or
-- expired reservation replays; releasing a committed one is refused.
-- outcome: 'ok' | 'replay' | 'not_found' | 'finalized'
-- Rate limits the hold was counted against get it back (credit_limit_finish).
-- Locks: the reservation, its rate_limits rows, the account.
-- History: 0002; primary-key lookup and enable_seqscan = off since 0007; rate
-- limits since 0013.
CREATE OR REPLACE FUNCTION credit_release(p_caller TEXT, p_reservation_id UUID, p_reason TEXT)
RETURNS TEXT LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    r reservations%ROWTYPE;
BEGIN
    SELECT * INTO r FROM reservations WHERE reservation_id = p_reservation_id FOR UPDATE;
    IF NOT FOUND OR r.caller <> p_caller THEN RETURN 'not_found'; END IF;
    IF r.status = 'committed' THEN RETURN 'finalized'; END IF;
    IF r.status <> 'held' THEN RETURN 'replay'; END IF;

    IF r.limit_ids <> '{}' THEN
        PERFORM credit_limits_save(array_agg(credit_limit_finish(x, 'release', true, r.created_at, r.amount_mc, 0,
                                                                 r.estimated_tokens, NULL, clock_timestamp())))
           FROM unnest(credit_limits_lock('{}', r.limit_ids)) x;
    END IF;
    UPDATE reservations SET status = 'released', finalized_at = now(), release_reason = p_reason
     WHERE reservation_id = r.reservation_id;
    PERFORM credit_apply_to_account(r.funding_kind, r.org_id, r.user_id, 0, -r.amount_mc);
    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id, note)
    VALUES (CASE WHEN r.funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
            r.org_id, r.user_id, 'release', -r.amount_mc, r.reservation_id, p_reason);
    RETURN 'ok';
END $$;
