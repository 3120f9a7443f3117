-- A stable fingerprint of the records (order-independent of ingest order): models are tagged with
-- it so a run names the exact data snapshot it saw. Rows are hashed one by one to bound memory.
SELECT
    count(*) AS n_records,
    sha256(coalesce(string_agg(
        record_id || ':' || sha256(config_json || chr(31) || logs_json || chr(31) || CAST(target AS VARCHAR)),
        chr(10) ORDER BY record_id
    ), '')) AS content_hash
FROM records;
