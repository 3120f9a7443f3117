-- The model's rows numbered into shards of $shard_rows, for a Parquet export (see regressor/shards.py).
SELECT record_id, source, task, period, config_json, logs_json, target,
       (row_number() OVER (ORDER BY task, period, source, record_id) - 1) // $shard_rows AS shard
FROM records
WHERE $source IS NULL OR source = $source
-- Rows in that order inside each shard too: without it, a shard's rows came in any order, and
-- a rank's training order (so its model) changed from one export of the same warehouse to the next.
ORDER BY task, period, source, record_id
