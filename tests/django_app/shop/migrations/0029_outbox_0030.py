"""The outbox schema's revision outbox_0030 (the rules on what the application writes are
checked while a row is pending) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0028_outbox_0029")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0029", revision="outbox_0030")])]
