"""The outbox schema's revision outbox_0022 (fillfactor 45) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0020_outbox_0021")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0021", revision="outbox_0022")])]
