-- One record per (source, task, period) that has a config, a log summary and a target.
CREATE VIEW records AS
SELECT
    l.source || '/' || l.task || '/' || strftime(l.period, '%Y-%m-%d') AS record_id,
    l.source,
    l.task,
    l.period,
    c.config_json,
    l.logs_json,
    t.target
FROM logs AS l
JOIN configs AS c ON c.source = l.source AND c.task = l.task
JOIN targets AS t ON t.source = l.source AND t.task = l.task AND t.period = l.period;
