-- The model's rows: one per (task, period) with config, log summary and target. Ordered to the
-- record: table and runs records often have no period, and their order must not follow the
-- order they were inserted in (the same snapshot would train on other batches).
SELECT record_id, source, task, period, config_json, logs_json, target
FROM records
ORDER BY task, period, source, record_id;
