-- Commit of one reservation: charges the actual amount (even above the hold:
-- flagged overrun; even after expiry: flagged late), removes the hold, writes
-- the attribution row and the ledger entry. A repeated Commit with the same
-- amount replays. The account is updated first: a charge past the largest
-- account total is refused before any write.
-- outcome: 'ok' | 'replay' | 'not_found' | 'finalized' | 'out_of_range'
-- Rate limits the hold was counted against get back what it did not use
-- (credit_limit_finish; p_tokens: the real token count, NULL keeps the
-- estimate). Locks: the reservation, its rate_limits rows, the account.
-- History: 0002; primary-key lookup and enable_seqscan = off since 0007;
-- 'out_of_range' since 0010; rate limits since 0013; the attribution row names the caller since 0015.
CREATE OR REPLACE FUNCTION credit_commit(p_caller TEXT, p_reservation_id UUID, p_amount_mc BIGINT, p_metadata JSONB,
                              p_tokens BIGINT,
                              OUT outcome TEXT, OUT charged_mc BIGINT, OUT available_mc BIGINT,
                              OUT overrun BOOLEAN, OUT late BOOLEAN, OUT funding_kind TEXT,
                              OUT org_id TEXT)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    r reservations%ROWTYPE;
    v_hold_removed BIGINT;
    v_limits rate_limits[];
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

    IF r.limit_ids <> '{}' THEN
        v_limits := credit_limits_lock('{}', r.limit_ids);
    END IF;
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
                                   overrun, late, caller)
    VALUES (r.reservation_id, r.org_id, r.user_id, r.funding_kind, r.service_type, r.service_name,
            p_amount_mc, r.request_id, r.metadata || p_metadata, overrun, late, r.caller);
    IF v_limits IS NOT NULL THEN
        PERFORM credit_limits_save(array_agg(credit_limit_finish(x, 'commit', r.status = 'held', r.created_at,
                                                                 r.amount_mc, p_amount_mc, r.estimated_tokens,
                                                                 p_tokens, clock_timestamp())))
           FROM unnest(v_limits) x;
    END IF;
    outcome := 'ok';
END $$;
