-- A runs source's stored runs by their files: the report's path and hash, the log's (or null).
SELECT path, log_path, content_hash, log_hash
FROM runs
WHERE source = $source
ORDER BY path;
