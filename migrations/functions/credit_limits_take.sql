-- credit_limit_try over every row that applies to a request: all advanced, or
-- none and the refusal that waits longest; `status` keeps, of each per-minute
-- kind, the row with the least remaining.
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limits_take(p_rows rate_limits[], p_now TIMESTAMPTZ, p_tokens BIGINT,
                                              p_amount_mc BIGINT,
                                              OUT rows rate_limits[], OUT refusal JSONB, OUT status JSONB)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r RECORD;
    kind TEXT;
BEGIN
    rows := p_rows; status := '{}';
    FOR i IN 1 .. coalesce(array_length(p_rows, 1), 0) LOOP
        SELECT * INTO r FROM credit_limit_try(p_rows[i], p_now, p_tokens, p_amount_mc);
        IF r.refusal IS NOT NULL THEN
            IF refusal IS NULL OR (r.refusal->>'retry_after_ms')::BIGINT > (refusal->>'retry_after_ms')::BIGINT THEN
                refusal := r.refusal;
            END IF;
        ELSE
            rows[i] := r.next;
            FOREACH kind IN ARRAY ARRAY['requests', 'tokens'] LOOP
                IF r.status ? kind AND (NOT status ? kind
                                        OR (r.status->kind->>1)::BIGINT < (status->kind->>1)::BIGINT) THEN
                    status := status || jsonb_build_object(kind, r.status->kind);
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    IF refusal IS NOT NULL THEN
        rows := p_rows; status := NULL;
    END IF;
END $$;
