-- What ingest already holds for a source: the basis for skipping unchanged files.
SELECT path, content_hash, parser, status
FROM files
WHERE source = $source;
