-- History is ordered by (writing transaction, seq), not by seq alone: parallel writers draw
-- sequence numbers in one order and commit in another, and a reader who paged past seq 8
-- must not miss seq 7 committing afterwards. Reads show only versions whose transaction lies
-- below the oldest running one (see haven_store::HistoryPos).
--
-- Versions written before this migration keep txid 0: they were all committed, and they sort
-- before every later version, in seq order as before. The constant default adds the column
-- without rewriting the table; new rows then take their transaction's id.
ALTER TABLE resource_version ADD COLUMN txid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE resource_version ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);

CREATE INDEX resource_version_by_tx ON resource_version (txid, seq);
CREATE INDEX resource_version_by_type_tx ON resource_version (resource_type, txid, seq);
CREATE INDEX resource_version_by_instance_tx ON resource_version (resource_type, id, txid, seq);
DROP INDEX resource_version_by_type;
DROP INDEX resource_version_by_instance;
