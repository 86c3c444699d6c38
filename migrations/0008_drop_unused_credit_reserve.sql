-- credit_reserve (0002, reshaped in 0003) has had no caller since the hot path
-- moved to credit_reserve_op and credit_batch (0004): a lone Reserve uses the
-- non-raising credit_reserve_op, a batched one credit_batch. Dropped so that
-- the hot path has one Reserve implementation per shape, not a third, stale one.
DROP FUNCTION credit_reserve(TEXT, TEXT, BYTEA, TEXT, TEXT, BIGINT, INT, TEXT, TEXT, JSONB);
