"""The outbox schema's revision outbox_0013 (outage breaker) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0011_outbox_0012")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0012", revision="outbox_0013")])]
