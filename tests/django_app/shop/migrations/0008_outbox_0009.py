"""The outbox schema's revision outbox_0009 (console sessions) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0007_outbox_0008")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0008", revision="outbox_0009")])]
