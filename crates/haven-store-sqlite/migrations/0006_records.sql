-- Small records outside FHIR (haven_store::records): the identity module's accounts, sessions,
-- authorization codes, refresh-token families and the like. The body is opaque to the store;
-- `version` starts at 1 and grows by one on every put, for compare-and-swap. Unlike the audit
-- tables these rows are updated and deleted.
CREATE TABLE identity_record (
    kind     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    version  INTEGER NOT NULL CHECK (version > 0),
    body     BLOB    NOT NULL,
    expires  INTEGER,                  -- microseconds since the Unix epoch, UTC; NULL: never
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;

-- Purging expired records walks this index, oldest expiry first.
CREATE INDEX identity_record_by_expiry ON identity_record (expires) WHERE expires IS NOT NULL;
