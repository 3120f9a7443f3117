SELECT count(*) AS n FROM records WHERE source = $source;
