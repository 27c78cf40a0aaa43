"""The outbox schema's revision outbox_0005 (drift reports) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_outbox_0004")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0004", revision="outbox_0005")])]
