-- A stable fingerprint of one source's records (independent of ingest order): models are tagged
-- with it so a run names the exact data snapshot it saw. Everything the model or the split reads
-- is in it: the task and period too (a run record's id does not name them). Other sources'
-- records are not: ingesting them leaves this source's snapshot, and its training key, as is.
-- Rows are hashed one by one to bound memory.
SELECT
    count(*) AS n_records,
    sha256(coalesce(string_agg(
        record_id || ':' || sha256(
            task || chr(31) || coalesce(CAST(period AS VARCHAR), '') || chr(31)
            || config_json || chr(31) || logs_json || chr(31) || CAST(target AS VARCHAR)
        ),
        chr(10) ORDER BY record_id
    ), '')) AS content_hash
FROM records
WHERE source = $source;
