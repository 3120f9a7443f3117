-- A runs source's good runs without their raw logs: the input for pairing runs into records.
SELECT run_key, task, period, path, content_hash, fields_json, config_json, target, logs_json
FROM runs
WHERE source = $source
ORDER BY run_key;
