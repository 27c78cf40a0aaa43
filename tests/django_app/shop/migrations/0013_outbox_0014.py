"""The outbox schema's revision outbox_0014 (console filter indexes) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0012_outbox_0013")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0013", revision="outbox_0014")])]
