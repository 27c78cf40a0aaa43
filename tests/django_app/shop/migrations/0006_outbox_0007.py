"""The outbox schema's revision outbox_0007 (customer history index) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0005_outbox_0006")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0006", revision="outbox_0007")])]
