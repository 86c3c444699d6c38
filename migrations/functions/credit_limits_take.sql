-- credit_limit_try over every row that applies to a request: all advanced, or
-- none and the refusal that waits longest; `status` keeps, of each per-minute
-- kind, the figures of the row with the least remaining.
-- History: 0013; status as an array 0014.
CREATE OR REPLACE FUNCTION credit_limits_take(p_rows rate_limits[], p_now TIMESTAMPTZ, p_tokens BIGINT,
                                              p_amount_mc BIGINT,
                                              OUT rows rate_limits[], OUT refusal JSONB, OUT status BIGINT[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    now_ns BIGINT := (extract(epoch FROM p_now) * 1000000000)::BIGINT;
    r RECORD;
BEGIN
    rows := p_rows;
    FOR i IN 1 .. coalesce(array_length(p_rows, 1), 0) LOOP
        r := credit_limit_try(p_rows[i], p_now, now_ns, p_tokens, p_amount_mc);
        IF r.refusal IS NOT NULL THEN
            IF refusal IS NULL OR (r.refusal->>'retry_after_ms')::BIGINT > (refusal->>'retry_after_ms')::BIGINT THEN
                refusal := r.refusal;
            END IF;
        ELSIF refusal IS NULL THEN
            rows[i] := r.next;
            IF status IS NULL THEN
                status := r.status;
            ELSE
                IF r.status[2] < coalesce(status[2], r.status[2] + 1) THEN status[1:3] := r.status[1:3]; END IF;
                IF r.status[5] < coalesce(status[5], r.status[5] + 1) THEN status[4:6] := r.status[4:6]; END IF;
            END IF;
        END IF;
    END LOOP;
    IF refusal IS NOT NULL THEN
        rows := p_rows; status := NULL;
    END IF;
END $$;
