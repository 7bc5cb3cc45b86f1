-- Kept in step with PostgreSQL's migration 0004, which orders history by (writing transaction,
-- seq) because its writers commit out of sequence order. SQLite has one writer, which commits
-- in seq order, so history keeps paging by seq and the schema needs no change here.
SELECT 1;
