"""The outbox schema's revision outbox_0017 (cheap transitions) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0015_outbox_0016")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0016", revision="outbox_0017")])]
