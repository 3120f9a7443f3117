-- The tasks of a source, for a message naming what there is.
SELECT DISTINCT task
FROM records
WHERE source = $source
ORDER BY task;
