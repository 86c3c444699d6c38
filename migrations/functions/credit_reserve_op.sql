-- Reserve of one request: places a hold iff the rate limits that apply let it
-- (credit_limits_take) and limit - used - held >= amount, in one conditional
-- UPDATE of the account row. Idempotent per (caller, request_id): a retry
-- replays, other arguments conflict. A lost race on the request_id undoes its
-- hold and returns 'retry' (no exception). Locks: rate_limits rows, then the
-- account.
-- outcome: 'ok' | 'replay' | 'conflict' | 'rate_limited' | 'insufficient' | 'retry' | resolution errors
-- limit_info: the refusal ('rate_limited'); limit_status: what is left of the
-- per-minute limits ('ok'; credit_limit_try's status array).
-- History: 0004; enable_seqscan = off since 0007; rate limits since 0013;
-- limit_status as an array since 0014.
CREATE OR REPLACE FUNCTION credit_reserve_op(p_caller TEXT, p_request_id TEXT, p_request_hash BYTEA,
                               p_user_id TEXT, p_org_id TEXT, p_amount_mc BIGINT,
                               p_ttl_seconds INT, p_service_type TEXT, p_service_name TEXT,
                               p_metadata JSONB, p_api_key_id TEXT, p_tokens BIGINT,
                               OUT outcome TEXT, OUT reservation_id UUID, OUT funding_kind TEXT,
                               OUT org_id TEXT, OUT reserved_mc BIGINT, OUT available_mc BIGINT,
                               OUT expires_at TIMESTAMPTZ, OUT status TEXT, OUT limit_info JSONB,
                               OUT limit_status BIGINT[])
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_hash BYTEA;
    v_user TEXT;
    v_limits rate_limits[];
    v_take RECORD;
    v_ids BIGINT[] := '{}';
BEGIN
    SELECT r.reservation_id, r.request_hash, r.funding_kind, r.org_id, r.amount_mc, r.expires_at, r.user_id,
           r.status
      INTO reservation_id, v_hash, funding_kind, org_id, reserved_mc, expires_at, v_user, status
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

    v_limits := credit_limits_lock(credit_limit_keys(funding_kind, org_id, p_user_id, p_api_key_id), '{}');
    IF v_limits IS NOT NULL THEN
        SELECT * INTO v_take FROM credit_limits_take(v_limits, clock_timestamp(), coalesce(p_tokens, 0), p_amount_mc);
        IF v_take.refusal IS NOT NULL THEN
            outcome := 'rate_limited'; limit_info := v_take.refusal;
            RETURN;
        END IF;
        SELECT array_agg(x.limit_id) INTO v_ids FROM unnest(v_limits) x;
    END IF;

    IF funding_kind = 'org' THEN
        UPDATE allocations a SET held_mc = a.held_mc + p_amount_mc
         WHERE a.org_id = credit_reserve_op.org_id AND a.user_id = p_user_id
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
                                   metadata, expires_at, api_key_id, estimated_tokens, limit_ids)
    VALUES (gen_random_uuid(), p_caller, p_request_id, p_request_hash, p_user_id,
            funding_kind, org_id, p_amount_mc, p_service_type, p_service_name,
            p_metadata, expires_at, nullif(p_api_key_id, ''), coalesce(p_tokens, 0), v_ids)
    ON CONFLICT (caller, request_id) DO NOTHING
    RETURNING r.reservation_id INTO reservation_id;
    IF NOT FOUND THEN
        -- A concurrent Reserve with this request_id won; undo our hold and let the caller retry
        -- (no exception: a batch must not abort, nor open a subtransaction per operation).
        PERFORM credit_apply_to_account(funding_kind, org_id, p_user_id, 0, -p_amount_mc);
        outcome := 'retry';
        RETURN;
    END IF;

    INSERT INTO ledger_entries (account, org_id, user_id, kind, delta_held_mc, reservation_id)
    VALUES (CASE WHEN funding_kind = 'org' THEN 'allocation' ELSE 'individual' END,
            org_id, p_user_id, 'hold', p_amount_mc, reservation_id);
    IF v_limits IS NOT NULL THEN
        PERFORM credit_limits_save(v_take.rows);
        limit_status := v_take.status;
    END IF;
    reserved_mc := p_amount_mc;
    status := 'held';
    outcome := 'ok';
END $$;
