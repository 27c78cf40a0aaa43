"""The outbox schema's revision outbox_0024 (the cancel trigger probes the lease key) as its own
Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0022_outbox_0023")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0023", revision="outbox_0024")])]
