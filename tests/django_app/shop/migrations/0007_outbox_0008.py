"""The outbox schema's revision outbox_0008 (trace context) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0006_outbox_0007")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0007", revision="outbox_0008")])]
