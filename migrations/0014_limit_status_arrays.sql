-- What is left of a granted Reserve's per-minute limits travels as a BIGINT[]
-- ([requests limit, remaining, reset ms, tokens limit, remaining, reset ms])
-- instead of a JSONB object built and merged per limit row: the same figures,
-- less work on the hot path (bench: authority_hot_limited). The functions whose
-- result type changes are dropped here and created again from
-- migrations/functions/ (credit_limit_try also takes the instant in
-- nanoseconds, computed once per Reserve). IF EXISTS: on a fresh database the
-- function files have not run yet (they run after the whole history).
DROP FUNCTION IF EXISTS credit_batch(TEXT[], TEXT[], TEXT[], BYTEA[], TEXT[], TEXT[], BIGINT[], INT[], TEXT[],
                                     TEXT[], JSONB[], UUID[], TEXT[], TEXT[], BIGINT[]);
DROP FUNCTION IF EXISTS credit_reserve_op(TEXT, TEXT, BYTEA, TEXT, TEXT, BIGINT, INT, TEXT, TEXT, JSONB, TEXT, BIGINT);
DROP FUNCTION IF EXISTS credit_limits_take(rate_limits[], TIMESTAMPTZ, BIGINT, BIGINT);
DROP FUNCTION IF EXISTS credit_limit_try(rate_limits, TIMESTAMPTZ, BIGINT, BIGINT);
