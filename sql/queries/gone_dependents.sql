-- Files to read again once the files in `gone_files` (a registered frame of paths) are forgotten,
-- because their stored rows depend on a gone one: the other file of a run (the report beside a
-- gone log is stored unchanged, and would be skipped), forgotten with it (`reread_only` false);
-- and every file with a row quarantined as the repeat of a key another file held (its key may be
-- free now; $repeated marks such reasons), whose rows stay until it is read again (`reread_only`).
SELECT r.path, false AS reread_only FROM runs AS r
WHERE r.source = $source AND (r.path IN (SELECT path FROM gone_files)
                              OR r.log_path IN (SELECT path FROM gone_files))
UNION
SELECT r.log_path, false AS reread_only FROM runs AS r
WHERE r.source = $source AND (r.path IN (SELECT path FROM gone_files)
                              OR r.log_path IN (SELECT path FROM gone_files))
UNION
SELECT q.path, true AS reread_only FROM quarantine AS q
WHERE q.source = $source AND contains(q.reason, $repeated)
ORDER BY 1, 2;
