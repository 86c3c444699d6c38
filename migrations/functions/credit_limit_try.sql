-- Whether one more request (p_tokens estimated tokens, a hold of p_amount_mc)
-- fits the limits of one rate_limits row at p_now. If it does: `next` is the
-- row advanced (arrival times, open holds, the day's and month's credits) and
-- `status` what is left of its per-minute limits, {"requests": [limit,
-- remaining, reset_ms], "tokens": [...]}. If not: `next` is the row unchanged
-- and `refusal` names the limit that waits longest: {"scope", "limit",
-- "value", "window", "retry_after_ms", "exceeds"} (exceeds: the request alone
-- is larger than the limit; waiting does not help).
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limit_try(l rate_limits, p_now TIMESTAMPTZ, p_tokens BIGINT, p_amount_mc BIGINT,
                                            OUT next rate_limits, OUT refusal JSONB, OUT status JSONB)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    now_ns BIGINT := (extract(epoch FROM p_now) * 1000000000)::BIGINT;
    v_day DATE := (p_now AT TIME ZONE 'UTC')::DATE;
    v_month DATE := date_trunc('month', p_now AT TIME ZONE 'UTC')::DATE;
    t BIGINT; tat BIGINT; used BIGINT; v_wait BIGINT; v_exceeds BOOLEAN;
    cand JSONB;
BEGIN
    next := l;
    status := '{}';
    FOR i IN 1 .. 5 LOOP
        cand := NULL; v_exceeds := false;
        IF i = 1 AND l.rpm IS NOT NULL THEN
            t := credit_limit_interval_ns(l.rpm);
            tat := greatest(l.req_tat_ns, now_ns) + t;
            IF tat - now_ns > l.rpm * t THEN
                cand := jsonb_build_object('limit', 'requests_per_minute', 'value', l.rpm, 'window', 'minute',
                                           'retry_after_ms', ceil((tat - now_ns - l.rpm * t) / 1e6));
            ELSE
                next.req_tat_ns := tat;
                status := status || jsonb_build_object('requests', jsonb_build_array(
                    l.rpm, (l.rpm * t - (tat - now_ns)) / t, ceil((tat - now_ns) / 1e6)));
            END IF;
        ELSIF i = 2 AND l.tpm IS NOT NULL AND p_tokens > 0 THEN
            t := credit_limit_interval_ns(l.tpm);
            IF p_tokens > l.tpm THEN
                v_exceeds := true; v_wait := 60000;
            ELSE
                tat := greatest(l.tok_tat_ns, now_ns) + p_tokens * t;
                v_wait := ceil((tat - now_ns - l.tpm * t) / 1e6);
            END IF;
            IF v_exceeds OR tat - now_ns > l.tpm * t THEN
                cand := jsonb_build_object('limit', 'tokens_per_minute', 'value', l.tpm, 'window', 'minute',
                                           'retry_after_ms', v_wait, 'exceeds', v_exceeds);
            ELSE
                next.tok_tat_ns := tat;
                status := status || jsonb_build_object('tokens', jsonb_build_array(
                    l.tpm, (l.tpm * t - (tat - now_ns)) / t, ceil((tat - now_ns) / 1e6)));
            END IF;
        ELSIF i = 3 AND l.max_parallel IS NOT NULL AND l.open_holds >= l.max_parallel THEN
            cand := jsonb_build_object('limit', 'max_parallel', 'value', l.max_parallel, 'window', 'parallel',
                                       'retry_after_ms', 1000);
        ELSIF i = 4 AND l.credits_per_day_mc IS NOT NULL THEN
            used := CASE WHEN l.day_start = v_day THEN l.day_mc ELSE 0 END;
            IF used + p_amount_mc > l.credits_per_day_mc THEN
                cand := jsonb_build_object('limit', 'credits_per_day', 'value', l.credits_per_day_mc, 'window', 'day',
                    'retry_after_ms', ceil(extract(epoch FROM ((v_day + 1)::TIMESTAMP AT TIME ZONE 'UTC') - p_now) * 1000),
                    'exceeds', p_amount_mc > l.credits_per_day_mc);
            END IF;
        ELSIF i = 5 AND l.credits_per_month_mc IS NOT NULL THEN
            used := CASE WHEN l.month_start = v_month THEN l.month_mc ELSE 0 END;
            IF used + p_amount_mc > l.credits_per_month_mc THEN
                cand := jsonb_build_object('limit', 'credits_per_month', 'value', l.credits_per_month_mc,
                    'window', 'month', 'retry_after_ms', ceil(extract(epoch FROM
                        ((v_month + interval '1 month')::TIMESTAMP AT TIME ZONE 'UTC') - p_now) * 1000),
                    'exceeds', p_amount_mc > l.credits_per_month_mc);
            END IF;
        END IF;
        IF cand IS NOT NULL AND (refusal IS NULL
                                 OR (cand->>'retry_after_ms')::BIGINT > (refusal->>'retry_after_ms')::BIGINT) THEN
            refusal := cand || jsonb_build_object('scope', l.scope);
        END IF;
    END LOOP;
    IF refusal IS NOT NULL THEN
        next := l; status := NULL;
        RETURN;
    END IF;
    next.open_holds := l.open_holds + 1;
    next.day_mc := CASE WHEN l.day_start = v_day THEN l.day_mc ELSE 0 END + p_amount_mc;
    next.day_start := v_day;
    next.month_mc := CASE WHEN l.month_start = v_month THEN l.month_mc ELSE 0 END + p_amount_mc;
    next.month_start := v_month;
END $$;
