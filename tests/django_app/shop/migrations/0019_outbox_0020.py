"""The outbox schema's revision outbox_0020 (unlogged leases) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0018_outbox_0019")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0019", revision="outbox_0020")])]
