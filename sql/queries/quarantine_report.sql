-- What was rejected, where, and why; newest run first within each file.
SELECT file, location, reason, ingest_run_id, source, quarantined_at
FROM quarantine
ORDER BY source, file, quarantined_at DESC, location;
