-- Small records outside FHIR (haven_store::records); same table as SQLite migration 0006.
-- Kind and key compare bytewise (COLLATE "C"), as in SQLite, so both stores list records in
-- the same key order. The application role needs SELECT, INSERT, UPDATE and DELETE here, which
-- `haven db grant` gives every table outside the audit trail.
CREATE TABLE identity_record (
    kind     TEXT COLLATE "C" NOT NULL,
    key      TEXT COLLATE "C" NOT NULL,
    version  BIGINT NOT NULL CHECK (version > 0),
    body     BYTEA  NOT NULL,
    expires  BIGINT,                   -- microseconds since the Unix epoch, UTC; NULL: never
    PRIMARY KEY (kind, key)
);

-- Purging expired records walks this index, oldest expiry first.
CREATE INDEX identity_record_by_expiry ON identity_record (expires) WHERE expires IS NOT NULL;
