"""The database floor: the pool, the one store in front of queries.sql, migrations, and the
operator commands (status, list, inspect, retry, cancel, prune) that the CLI, the console and
migrate share."""
