-- The files of a source with a quarantined row whose reason contains $reason (a fixed marker the
-- adapter writes), e.g. a key repeated from another file: they are read again when files change.
SELECT DISTINCT path
FROM quarantine
WHERE source = $source AND contains(reason, $reason)
ORDER BY path;
