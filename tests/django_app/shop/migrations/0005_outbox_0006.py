"""The outbox schema's revision outbox_0006 (relay process tokens) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0004_outbox_0005")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0005", revision="outbox_0006")])]
