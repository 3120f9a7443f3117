-- The model's rows: one per (task, period) with config, log summary and target.
SELECT record_id, source, task, period, config_json, logs_json, target
FROM records
ORDER BY task, period, source;
