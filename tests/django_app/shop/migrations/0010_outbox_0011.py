"""The outbox schema's revision outbox_0011 (failures by code index) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0009_outbox_0010")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0010", revision="outbox_0011")])]
