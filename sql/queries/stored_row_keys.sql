-- Which keys of `candidate_keys` (a registered frame with record_key) the source already holds
-- from another file than $path, with where and that file's content hash: the table adapter keeps
-- the row of the file listed first and quarantines the repeat.
SELECT r.record_key, r.path, min(r.line) AS line, any_value(r.content_hash) AS content_hash
FROM row_records AS r
JOIN candidate_keys AS c ON c.record_key = r.record_key
WHERE r.source = $source AND r.path <> $path
GROUP BY r.record_key, r.path;
