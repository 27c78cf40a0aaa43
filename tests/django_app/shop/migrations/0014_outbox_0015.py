"""The outbox schema's revision outbox_0015 (cheap transitions) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0013_outbox_0014")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0014", revision="outbox_0015")])]
