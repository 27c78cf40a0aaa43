"""The outbox schema's revision outbox_0026 (the due index ordered by available_at and id) as its
own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0024_outbox_0025")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0025", revision="outbox_0026")])]
