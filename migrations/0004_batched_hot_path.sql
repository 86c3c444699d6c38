-- Batched hot path: one transaction for many concurrent operations of one
-- authority process (group commit). Durability is unchanged — no operation
-- is acknowledged before its batch has committed — while a busy account costs
-- one row lock, one WAL flush and one round trip per batch instead of per call.
--
-- Lock order inside a batch is the global one: the reservation rows of every
-- Commit/Release (sorted), then accounts in sorted order; operations on the
-- same account keep their arrival order. So batches of several processes, the
-- single-call functions and the sweeper cannot deadlock one another.

-- credit_reserve without the exception: a lost race on the request_id
-- returns outcome 'retry' after undoing its hold.
CREATE FUNCTION credit_reserve_op(p_caller TEXT, p_request_id TEXT, p_request_hash BYTEA,
                               p_user_id TEXT, p_org_id TEXT, p_amount_mc BIGINT,
                               p_ttl_seconds INT, p_service_type TEXT, p_service_name TEXT,
                               p_metadata JSONB,
                               OUT outcome TEXT, OUT reservation_id UUID, OUT funding_kind TEXT,
                               OUT org_id TEXT, OUT reserved_mc BIGINT, OUT available_mc BIGINT,
                               OUT expires_at TIMESTAMPTZ, OUT status TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    v_hash BYTEA;
    v_user TEXT;
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
                                   metadata, expires_at)
    VALUES (gen_random_uuid(), p_caller, p_request_id, p_request_hash, p_user_id,
            funding_kind, org_id, p_amount_mc, p_service_type, p_service_name,
            p_metadata, expires_at)
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
    reserved_mc := p_amount_mc;
    status := 'held';
    outcome := 'ok';
END $$;

-- Runs operations i = 1..n: kinds[i] is 'reserve', 'commit' or 'release';
-- the other arrays hold each operation's arguments (unused ones NULL).
CREATE FUNCTION credit_batch(kinds TEXT[], callers TEXT[], request_ids TEXT[], hashes BYTEA[],
                             user_ids TEXT[], org_ids TEXT[], amounts BIGINT[], ttls INT[],
                             service_types TEXT[], service_names TEXT[], metadatas JSONB[],
                             reservation_ids UUID[], reasons TEXT[])
RETURNS TABLE (idx INT, outcome TEXT, reservation_id UUID, funding_kind TEXT, org_id TEXT,
               amount_mc BIGINT, available_mc BIGINT, expires_at TIMESTAMPTZ, status TEXT,
               overrun BOOLEAN, late BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    n INT := coalesce(array_length(kinds, 1), 0);
    account_keys TEXT[] := array_fill(''::TEXT, ARRAY[n]);
    i INT;
    r RECORD;
    v_key TEXT;
BEGIN
    -- 1. Where each operation will write (read only, no locks yet).
    FOR i IN 1 .. n LOOP
        IF kinds[i] = 'reserve' THEN
            SELECT f.outcome || '/' || coalesce(f.org_id, '') || '/' || user_ids[i] INTO v_key
              FROM credit_resolve_funding(user_ids[i], org_ids[i]) f;
        ELSE
            SELECT x.funding_kind || '/' || coalesce(x.org_id, '') || '/' || x.user_id INTO v_key
              FROM reservations x WHERE x.reservation_id = reservation_ids[i];
        END IF;
        account_keys[i] := coalesce(v_key, '');
    END LOOP;
    -- 2. Reservation rows first, in one fixed order.
    PERFORM 1 FROM reservations x
     WHERE x.reservation_id = ANY (reservation_ids) ORDER BY x.reservation_id FOR UPDATE;
    -- 3. Operations by account, arrival order within an account.
    FOR i IN SELECT o.i FROM generate_subscripts(kinds, 1) AS o(i)
              ORDER BY coalesce(account_keys[o.i], ''), o.i LOOP
        idx := i;
        outcome := NULL; reservation_id := NULL; funding_kind := NULL; org_id := NULL; amount_mc := NULL;
        available_mc := NULL; expires_at := NULL; status := NULL; overrun := NULL; late := NULL;
        IF kinds[i] = 'reserve' THEN
            SELECT * INTO r FROM credit_reserve_op(callers[i], request_ids[i], hashes[i], user_ids[i], org_ids[i],
                                                   amounts[i], ttls[i], service_types[i], service_names[i],
                                                   metadatas[i]);
            outcome := r.outcome; reservation_id := r.reservation_id; funding_kind := r.funding_kind;
            org_id := r.org_id; amount_mc := r.reserved_mc; available_mc := r.available_mc;
            expires_at := r.expires_at; status := r.status;
        ELSIF kinds[i] = 'commit' THEN
            SELECT * INTO r FROM credit_commit(callers[i], reservation_ids[i], amounts[i], metadatas[i]);
            outcome := r.outcome; amount_mc := r.charged_mc; available_mc := r.available_mc;
            overrun := r.overrun; late := r.late; funding_kind := r.funding_kind; org_id := r.org_id;
        ELSE
            outcome := credit_release(callers[i], reservation_ids[i], reasons[i]);
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
