"""The outbox schema's revision outbox_0027 (the owner's-rights functions call the built-ins by
their pg_catalog names) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0025_outbox_0026")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0026", revision="outbox_0027")])]
