-- Which keys of `candidate_keys` (a registered frame with record_key) the source already holds
-- from another file than $path, with where: the table adapter keeps the first, quarantines the
-- repeat.
SELECT r.record_key, r.path, min(r.line) AS line
FROM row_records AS r
JOIN candidate_keys AS c ON c.record_key = r.record_key
WHERE r.source = $source AND r.path <> $path
GROUP BY r.record_key, r.path;
