-- Every input path a source holds rows of: its `files` rows and its quarantine rows, except the
-- refusals of files never read (their reason ends with $not_read), which each run writes afresh.
SELECT path FROM files WHERE source = $source
UNION
SELECT path FROM quarantine WHERE source = $source AND NOT ends_with(reason, $not_read)
ORDER BY path;
