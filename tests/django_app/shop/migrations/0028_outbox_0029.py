"""The outbox schema's revision outbox_0029 (the cancel trigger reads the lease table before it
probes the lease key) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0027_outbox_0028")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0028", revision="outbox_0029")])]
