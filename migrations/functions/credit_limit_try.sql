-- Whether one more request (p_tokens estimated tokens, a hold of p_amount_mc)
-- fits the limits of one rate_limits row at p_now (p_now_ns: the same instant
-- in nanoseconds since the epoch). If it does: `next` is the row advanced
-- (arrival times, open holds, the day's and month's credits) and `status` what is left of its per-minute limits:
-- [requests limit, remaining, reset ms, tokens limit, remaining, reset ms]
-- (NULLs where none is set). If not: `next` is the row unchanged and `refusal`
-- names the limit that waits longest: {"scope", "limit", "value", "window",
-- "retry_after_ms", "exceeds"} (exceeds: the request alone is larger than the
-- limit; waiting does not help).
-- History: 0013; status as an array 0014.
CREATE OR REPLACE FUNCTION credit_limit_try(l rate_limits, p_now TIMESTAMPTZ, p_now_ns BIGINT, p_tokens BIGINT,
                                            p_amount_mc BIGINT,
                                            OUT next rate_limits, OUT refusal JSONB, OUT status BIGINT[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t BIGINT; tat BIGINT; v_wait BIGINT := -1; v_exceeds BOOLEAN := false;
    v_limit TEXT; v_value BIGINT; v_window TEXT;
    v_day DATE; v_month DATE; used BIGINT;
BEGIN
    next := l;
    status := ARRAY[NULL, NULL, NULL, NULL, NULL, NULL]::BIGINT[];
    IF l.rpm IS NOT NULL THEN
        t := credit_limit_interval_ns(l.rpm);
        tat := greatest(l.req_tat_ns, p_now_ns) + t;
        IF tat - p_now_ns > l.rpm * t THEN
            v_wait := (tat - p_now_ns - l.rpm * t + 999999) / 1000000;
            v_limit := 'requests_per_minute'; v_value := l.rpm; v_window := 'minute';
        ELSE
            next.req_tat_ns := tat;
            status[1] := l.rpm; status[2] := (l.rpm * t - (tat - p_now_ns)) / t;
            status[3] := (tat - p_now_ns + 999999) / 1000000;
        END IF;
    END IF;
    IF l.tpm IS NOT NULL AND p_tokens > 0 THEN
        t := credit_limit_interval_ns(l.tpm);
        IF p_tokens > l.tpm THEN
            v_wait := 60000; v_exceeds := true;
            v_limit := 'tokens_per_minute'; v_value := l.tpm; v_window := 'minute';
        ELSE
            tat := greatest(l.tok_tat_ns, p_now_ns) + p_tokens * t;
            IF tat - p_now_ns > l.tpm * t THEN
                IF (tat - p_now_ns - l.tpm * t + 999999) / 1000000 > v_wait THEN
                    v_wait := (tat - p_now_ns - l.tpm * t + 999999) / 1000000;
                    v_limit := 'tokens_per_minute'; v_value := l.tpm; v_window := 'minute';
                END IF;
            ELSE
                next.tok_tat_ns := tat;
                status[4] := l.tpm; status[5] := (l.tpm * t - (tat - p_now_ns)) / t;
                status[6] := (tat - p_now_ns + 999999) / 1000000;
            END IF;
        END IF;
    END IF;
    IF l.max_parallel IS NOT NULL AND l.open_holds >= l.max_parallel AND v_wait < 1000 THEN
        v_wait := 1000; v_limit := 'max_parallel'; v_value := l.max_parallel; v_window := 'parallel';
    END IF;
    v_day := (p_now AT TIME ZONE 'UTC')::DATE;
    used := CASE WHEN l.day_start = v_day THEN l.day_mc ELSE 0 END;
    next.day_mc := used + p_amount_mc; next.day_start := v_day;
    IF l.credits_per_day_mc IS NOT NULL AND used + p_amount_mc > l.credits_per_day_mc THEN
        v_wait := greatest(v_wait, ceil(extract(epoch FROM ((v_day + 1)::TIMESTAMP AT TIME ZONE 'UTC') - p_now)
                                        * 1000)::BIGINT);
        v_limit := 'credits_per_day'; v_value := l.credits_per_day_mc; v_window := 'day';
        v_exceeds := p_amount_mc > l.credits_per_day_mc;
    END IF;
    v_month := date_trunc('month', p_now AT TIME ZONE 'UTC')::DATE;
    used := CASE WHEN l.month_start = v_month THEN l.month_mc ELSE 0 END;
    next.month_mc := used + p_amount_mc; next.month_start := v_month;
    IF l.credits_per_month_mc IS NOT NULL AND used + p_amount_mc > l.credits_per_month_mc THEN
        v_wait := greatest(v_wait, ceil(extract(epoch FROM
            ((v_month + interval '1 month')::TIMESTAMP AT TIME ZONE 'UTC') - p_now) * 1000)::BIGINT);
        v_limit := 'credits_per_month'; v_value := l.credits_per_month_mc; v_window := 'month';
        v_exceeds := p_amount_mc > l.credits_per_month_mc;
    END IF;
    IF v_limit IS NOT NULL THEN
        next := l; status := NULL;
        refusal := jsonb_build_object('scope', l.scope, 'limit', v_limit, 'value', v_value, 'window', v_window,
                                      'retry_after_ms', v_wait, 'exceeds', v_exceeds);
        RETURN;
    END IF;
    next.open_holds := l.open_holds + 1;
END $$;
