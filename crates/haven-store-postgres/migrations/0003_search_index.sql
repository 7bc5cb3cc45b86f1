-- The search index (see haven_store::search): the head table gains a surrogate key `rid` that
-- index rows refer to and a `deleted` flag, so searches never touch resource bodies.
-- Same schema and version number as the SQLite migration 0003; types are PostgreSQL's. Text
-- columns of the index compare bytewise (COLLATE "C"), as in SQLite, so prefix ranges
-- work the same and use the btree indexes.
ALTER TABLE resource ADD COLUMN rid BIGINT GENERATED ALWAYS AS IDENTITY;
ALTER TABLE resource ADD COLUMN deleted SMALLINT NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1));
UPDATE resource r SET deleted = 1 FROM resource_version v WHERE v.seq = r.seq AND v.change_kind = 3;
ALTER TABLE resource ADD CONSTRAINT resource_rid UNIQUE (rid);
-- Searches without criteria list a type's live resources in rid order.
CREATE INDEX resource_live ON resource (resource_type, rid) WHERE deleted = 0;

-- One table per kind of value. `param` is a ParamKey (type and parameter), `grp` ties the
-- components of one composite element together. Each table has an index for matching
-- (param first, then the values queries compare) and one by resource (rid, param) for
-- replacing a resource's rows and for sort keys.
CREATE TABLE search_string (
    rid         BIGINT   NOT NULL,
    param       INTEGER NOT NULL,
    grp         INTEGER NOT NULL,
    normalized  TEXT COLLATE "C" NOT NULL,
    exact       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX search_string_match ON search_string (param, normalized, rid);
-- `:contains` is a LIKE '%...%': trigrams let it use an index (pg_trgm is a trusted
-- extension: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX search_string_contains ON search_string USING gin (normalized gin_trgm_ops);
CREATE INDEX search_string_rid ON search_string (rid, param);

CREATE TABLE search_token (
    rid          BIGINT   NOT NULL,
    param        INTEGER NOT NULL,
    grp          INTEGER NOT NULL,
    system       TEXT COLLATE "C",
    code         TEXT COLLATE "C",
    text         TEXT COLLATE "C",
    type_system  TEXT COLLATE "C",
    type_code    TEXT COLLATE "C"
);
CREATE INDEX search_token_match ON search_token (param, code, system, rid);
CREATE INDEX search_token_rid ON search_token (rid, param);

CREATE TABLE search_reference (
    rid           BIGINT   NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL,
    -- Default collation, like resource.resource_type and resource.id, so joins between a
    -- reference and its target can use the target's primary key (a collation mismatch would
    -- keep PostgreSQL off the index). These columns are only compared for equality.
    target_type   TEXT,
    target_id     TEXT,
    version       TEXT COLLATE "C",
    url           TEXT COLLATE "C",
    ident_system  TEXT COLLATE "C",
    ident_value   TEXT COLLATE "C"
);
CREATE INDEX search_reference_match ON search_reference (param, target_id, target_type, rid);
CREATE INDEX search_reference_rid ON search_reference (rid, param);

CREATE TABLE search_date (
    rid       BIGINT   NOT NULL,
    param     INTEGER NOT NULL,
    grp       INTEGER NOT NULL,
    start_at  BIGINT  NOT NULL,                 -- microseconds since the epoch, inclusive
    end_at    BIGINT  NOT NULL                  -- exclusive
);
CREATE INDEX search_date_match ON search_date (param, start_at, end_at, rid);
CREATE INDEX search_date_rid ON search_date (rid, param);

CREATE TABLE search_number (
    rid     BIGINT   NOT NULL,
    param   INTEGER NOT NULL,
    grp     INTEGER NOT NULL,
    lower   DOUBLE PRECISION NOT NULL,
    upper   DOUBLE PRECISION NOT NULL,
    system  TEXT COLLATE "C",
    code    TEXT COLLATE "C",
    unit    TEXT COLLATE "C"
);
CREATE INDEX search_number_match ON search_number (param, lower, rid);
CREATE INDEX search_number_rid ON search_number (rid, param);

CREATE TABLE search_uri (
    rid    BIGINT   NOT NULL,
    param  INTEGER NOT NULL,
    grp    INTEGER NOT NULL,
    value  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX search_uri_match ON search_uri (param, value, rid);
CREATE INDEX search_uri_rid ON search_uri (rid, param);

-- Maintenance state (e.g. which search definitions the index was built with).
CREATE TABLE store_meta (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
