-- What was rejected, where, and why; newest run first within each file, then by line number
-- (`line 3` before `line 10`: the locations are text), the whole file's reason first.
SELECT file, location, reason, ingest_run_id, source, quarantined_at
FROM quarantine
ORDER BY
    source,
    file,
    quarantined_at DESC,
    TRY_CAST(regexp_extract(location, '^line (\d+)', 1) AS BIGINT) NULLS FIRST,
    location;
