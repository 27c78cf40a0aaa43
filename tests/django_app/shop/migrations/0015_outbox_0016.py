"""The outbox schema's revision outbox_0016 (confirmation) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0014_outbox_0015")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0015", revision="outbox_0016")])]
