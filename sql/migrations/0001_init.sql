-- Raw inputs with provenance. Paths are relative to the source root, so moving the data
-- directory does not duplicate rows. No primary keys: a changed file's rows are deleted and
-- re-inserted in one transaction, and ingest guarantees one row per key.

-- Every file ingest has looked at, with the hash that lets an unchanged file be skipped.
CREATE TABLE files (
    source        VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,   -- config | log | targets
    content_hash  VARCHAR NOT NULL,   -- sha256 of the file's bytes
    parser        VARCHAR NOT NULL,   -- parser version: a new one re-parses unchanged bytes
    status        VARCHAR NOT NULL,   -- ok | quarantined
    size_bytes    BIGINT NOT NULL,
    ingest_run_id VARCHAR NOT NULL,
    ingested_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE configs (
    source        VARCHAR NOT NULL,
    task          VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    content_hash  VARCHAR NOT NULL,
    ingest_run_id VARCHAR NOT NULL,
    line_start    INTEGER NOT NULL,
    line_end      INTEGER NOT NULL,
    raw_text      VARCHAR NOT NULL,
    config_json   VARCHAR NOT NULL    -- the parsed config, a JSON object
);

CREATE TABLE logs (
    source        VARCHAR NOT NULL,
    task          VARCHAR NOT NULL,
    period        DATE NOT NULL,
    path          VARCHAR NOT NULL,
    content_hash  VARCHAR NOT NULL,
    ingest_run_id VARCHAR NOT NULL,
    line_start    INTEGER NOT NULL,
    line_end      INTEGER NOT NULL,
    raw_text      VARCHAR NOT NULL,
    logs_json     VARCHAR NOT NULL    -- the summary from regressor.sources.logs
);

CREATE TABLE targets (
    source        VARCHAR NOT NULL,
    task          VARCHAR NOT NULL,
    period        DATE NOT NULL,
    target        DOUBLE NOT NULL,
    path          VARCHAR NOT NULL,
    content_hash  VARCHAR NOT NULL,
    ingest_run_id VARCHAR NOT NULL,
    line          INTEGER NOT NULL
);

-- Inputs that were rejected, whole files or single rows, with a reason naming the file.
CREATE TABLE quarantine (
    source         VARCHAR NOT NULL,
    path           VARCHAR NOT NULL,  -- relative to the source root (the replacement key)
    file           VARCHAR NOT NULL,  -- the file as ingest saw it, for humans
    location       VARCHAR NOT NULL,  -- 'file', 'line 12', 'byte 40 (line 3)'
    reason         VARCHAR NOT NULL,
    content_hash   VARCHAR NOT NULL,
    ingest_run_id  VARCHAR NOT NULL,
    quarantined_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
