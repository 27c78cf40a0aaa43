"""The outbox schema's revision outbox_0018 (held rows per meter from the tallies) as its own
Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0016_outbox_0017")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0017", revision="outbox_0018")])]
