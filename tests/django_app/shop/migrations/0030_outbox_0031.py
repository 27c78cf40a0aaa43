"""The outbox schema's revision outbox_0031 (the due index's own predicate, and the status
view's probe of leased rows) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0029_outbox_0030")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0030", revision="outbox_0031")])]
