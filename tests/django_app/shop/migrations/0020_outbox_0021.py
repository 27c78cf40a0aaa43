"""The outbox schema's revision outbox_0021 (fresh rows) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0019_outbox_0020")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0020", revision="outbox_0021")])]
