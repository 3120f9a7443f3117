-- Postgres creates POSTGRES_DB (MLflow's) itself; Prefect gets a database of its own.
CREATE DATABASE prefect;
