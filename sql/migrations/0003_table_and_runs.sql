-- The `table` and `runs` adapters. A table row is a whole record; a run is a report plus a
-- time-series log, and its records (a run paired with a reference run) are derived from `runs`.

-- One row per good run: its parsed fields, target, raw log and log summary, with provenance.
CREATE TABLE runs (
    source        VARCHAR NOT NULL,
    run_key       VARCHAR NOT NULL,   -- the run folder, relative to the source root
    task          VARCHAR NOT NULL,
    period        DATE,               -- the run's date, when the report has one
    path          VARCHAR NOT NULL,   -- the report file (provenance and replacement key)
    log_path      VARCHAR NOT NULL,
    content_hash  VARCHAR NOT NULL,   -- sha256 of the report's bytes
    log_hash      VARCHAR,            -- null when the log is missing or quarantined
    ingest_run_id VARCHAR NOT NULL,
    fields_json   VARCHAR NOT NULL,   -- path groups + every report field + lookups
    config_json   VARCHAR NOT NULL,   -- the fields a record may show (no leaky ones)
    target        DOUBLE NOT NULL,
    log_lines     INTEGER,            -- null with log_hash: the run still has a config record
    raw_log       VARCHAR,
    logs_json     VARCHAR
);

-- Records built directly by an adapter (a table row; a run with its reference run's log).
CREATE TABLE row_records (
    source        VARCHAR NOT NULL,
    record_key    VARCHAR NOT NULL,   -- unique within the source
    task          VARCHAR NOT NULL,
    period        DATE,
    config_json   VARCHAR NOT NULL,
    logs_json     VARCHAR NOT NULL,
    target        DOUBLE NOT NULL,
    path          VARCHAR NOT NULL,   -- the file the row came from (a run's report)
    line          INTEGER NOT NULL,   -- the file line (0 for run records)
    ref_path      VARCHAR,            -- the reference run's report, for paired run records
    content_hash  VARCHAR NOT NULL,
    ingest_run_id VARCHAR NOT NULL
);

CREATE OR REPLACE VIEW records AS
SELECT
    l.source || '/' || l.task || '/' || strftime(l.period, '%Y-%m-%d') AS record_id,
    l.source,
    l.task,
    l.period,
    c.config_json,
    l.logs_json,
    t.target
FROM logs AS l
JOIN configs AS c ON c.source = l.source AND c.task = l.task
JOIN targets AS t ON t.source = l.source AND t.task = l.task AND t.period = l.period
UNION ALL
SELECT
    source || '/' || record_key AS record_id,
    source,
    task,
    period,
    config_json,
    logs_json,
    target
FROM row_records;
