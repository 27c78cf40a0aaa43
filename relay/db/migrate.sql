-- Adoption of a database migrated before the outbox had its own version table (relay/db/migrate.py).

-- name: table_exists
SELECT to_regclass(:name) IS NOT NULL

-- name: legacy_versions
SELECT version_num FROM alembic_version

-- name: create_version_table
CREATE TABLE outbox_alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT outbox_alembic_version_pkc PRIMARY KEY (version_num)
)

-- name: record_version
INSERT INTO outbox_alembic_version (version_num) VALUES (:version)

-- name: forget_legacy_version
DELETE FROM alembic_version WHERE version_num = :version

-- name: versions_left
SELECT count(*) FROM alembic_version

-- name: drop_legacy_table
DROP TABLE alembic_version
