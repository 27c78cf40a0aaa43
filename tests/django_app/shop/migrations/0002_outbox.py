"""The outbox schema as a Django migration (docs/migrations.md, recipe c).

Pinned to a revision, so this migration means the same thing whatever outbox-relay release is
installed later; a newer release gets a new Django migration with
`schema_sql(start="outbox_0003", revision="outbox_0004")`. The SQL also records the revision
in outbox_alembic_version, which `outbox-relay run` checks. One list item is one execute()
without parameters, so the PL/pgSQL `%` and `$$` bodies reach PostgreSQL untouched.
"""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    operations = [migrations.RunSQL([schema_sql(revision="outbox_0003")])]
