"""The outbox schema's revision outbox_0025 (prune keeps the created_at range index tight) as
its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0023_outbox_0024")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0024", revision="outbox_0025")])]
