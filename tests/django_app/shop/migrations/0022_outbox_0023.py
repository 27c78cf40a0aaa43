"""The outbox schema's revision outbox_0023 (cheaper tallies) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0021_outbox_0022")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0022", revision="outbox_0023")])]
