-- kobo-role.sql — the login role kobod connects as, run once per shard on its
-- primary (psql -f kobo-role.sql DBURI). No superuser: it owns the database
-- (kobod creates and migrates its schemas itself) and reads replication state
-- through pg_monitor. Authentication is pg_hba.conf's (scram-sha-256 with a
-- password in production: ALTER ROLE kobo PASSWORD '…'; the local fleet
-- uses trust inside its own namespaces).
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kobo') THEN
		CREATE ROLE kobo LOGIN;
	END IF;
END
$$;
ALTER DATABASE kobo OWNER TO kobo;
GRANT pg_monitor TO kobo;
