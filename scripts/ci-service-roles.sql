-- Roles on CI's PostgreSQL service container, as on a real server: the container's superuser
-- migrates and seeds; the smoke suite runs as an application role that owns nothing and may
-- only read and write the game's rows, with a monitoring role for what that role may not see
-- (README "The monitoring connection"). Run as the superuser in the application's database:
--   psql -v ON_ERROR_STOP=1 -v app_password=... -v monitor_password=... -f scripts/ci-service-roles.sql
-- before migrating (roles) and again after (grants on the tables the migrations created).
SELECT format('CREATE ROLE hokm_app LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hokm_app') \gexec
SELECT format('CREATE ROLE hokm_monitor LOGIN PASSWORD %L', :'monitor_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hokm_monitor') \gexec
ALTER ROLE hokm_monitor SET default_transaction_read_only = on;
GRANT pg_monitor TO hokm_monitor;
GRANT SELECT ON pg_catalog.pg_hba_file_rules TO hokm_monitor;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO hokm_monitor;
GRANT USAGE ON SCHEMA public TO hokm_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO hokm_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO hokm_app;
