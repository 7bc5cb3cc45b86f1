-- The search index (see haven_store::search): the head table gains a surrogate key `rid` that
-- index rows refer to and a `deleted` flag, so searches never touch resource bodies.
-- Same schema and version number as the PostgreSQL migration 0003; types are SQLite's.
CREATE TABLE resource_head (
    rid            INTEGER PRIMARY KEY,         -- never reused: head rows are never deleted
    resource_type  TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    seq            INTEGER NOT NULL REFERENCES resource_version (seq),
    deleted        INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    UNIQUE (resource_type, id)
);
INSERT INTO resource_head (resource_type, id, version, seq, deleted)
    SELECT r.resource_type, r.id, r.version, r.seq, v.change_kind = 3
    FROM resource r JOIN resource_version v ON v.seq = r.seq ORDER BY r.seq;
DROP TABLE resource;
ALTER TABLE resource_head RENAME TO resource;
-- Searches without criteria list a type's live resources in rid order.
CREATE INDEX resource_live ON resource (resource_type, rid) WHERE deleted = 0;

-- One table per kind of value. `param` is a ParamKey (type and parameter), `grp` ties the
-- components of one composite element together. Each table has an index for matching
-- (param first, then the values queries compare) and one by resource (rid, param) for
-- replacing a resource's rows and for sort keys.
CREATE TABLE search_string (
    rid         INTEGER NOT NULL,
    param       INTEGER NOT NULL,
    grp         INTEGER NOT NULL,
    normalized  TEXT    NOT NULL,
    exact       TEXT    NOT NULL
);
CREATE INDEX search_string_match ON search_string (param, normalized, rid);
CREATE INDEX search_string_rid ON search_string (rid, param);

CREATE TABLE search_token (
    rid          INTEGER NOT NULL,
    param        INTEGER NOT NULL,
    grp          INTEGER NOT NULL,
    system       TEXT,
    code         TEXT,
    text         TEXT,
    type_system  TEXT,
    type_code    TEXT
);
CREATE INDEX search_token_match ON search_token (param, code, system, rid);
CREATE INDEX search_token_rid ON search_token (rid, param);

CREATE TABLE search_reference (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    version       TEXT,
    url           TEXT,
    ident_system  TEXT,
    ident_value   TEXT
);
CREATE INDEX search_reference_match ON search_reference (param, target_id, target_type, rid);
CREATE INDEX search_reference_rid ON search_reference (rid, param);

CREATE TABLE search_date (
    rid       INTEGER NOT NULL,
    param     INTEGER NOT NULL,
    grp       INTEGER NOT NULL,
    start_at  INTEGER NOT NULL,                 -- microseconds since the epoch, inclusive
    end_at    INTEGER NOT NULL                  -- exclusive
);
CREATE INDEX search_date_match ON search_date (param, start_at, end_at, rid);
CREATE INDEX search_date_rid ON search_date (rid, param);

CREATE TABLE search_number (
    rid     INTEGER NOT NULL,
    param   INTEGER NOT NULL,
    grp     INTEGER NOT NULL,
    lower   REAL    NOT NULL,
    upper   REAL    NOT NULL,
    system  TEXT,
    code    TEXT,
    unit    TEXT
);
CREATE INDEX search_number_match ON search_number (param, lower, rid);
CREATE INDEX search_number_rid ON search_number (rid, param);

CREATE TABLE search_uri (
    rid    INTEGER NOT NULL,
    param  INTEGER NOT NULL,
    grp    INTEGER NOT NULL,
    value  TEXT    NOT NULL
);
CREATE INDEX search_uri_match ON search_uri (param, value, rid);
CREATE INDEX search_uri_rid ON search_uri (rid, param);

-- Maintenance state (e.g. which search definitions the index was built with).
CREATE TABLE store_meta (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;
