-- One task's records of a source, oldest first (`textperf record` writes one as a template).
SELECT task, period, config_json, logs_json, target
FROM records
WHERE source = $source AND task = $task
ORDER BY period NULLS FIRST, record_id;
