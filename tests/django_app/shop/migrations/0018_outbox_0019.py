"""The outbox schema's revision outbox_0019 (carried acceptance) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0017_outbox_0018")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0018", revision="outbox_0019")])]
