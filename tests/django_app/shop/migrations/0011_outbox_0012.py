"""The outbox schema's revision outbox_0012 (meter catalogue) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0010_outbox_0011")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0011", revision="outbox_0012")])]
