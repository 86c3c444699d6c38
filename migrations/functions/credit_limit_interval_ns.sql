-- GCRA's emission interval of a per-minute limit, in nanoseconds: 60 s / limit,
-- rounded up (the sustained rate never passes the limit). A burst of `limit`
-- is allowed: a request passes while its arrival time is at most limit ×
-- interval ahead of now.
-- History: 0013.
CREATE OR REPLACE FUNCTION credit_limit_interval_ns(p_per_minute BIGINT)
RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (60000000000 + p_per_minute - 1) / p_per_minute
$$;
