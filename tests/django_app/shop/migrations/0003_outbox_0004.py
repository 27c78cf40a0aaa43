"""The outbox schema's next revision as its own Django migration (docs/migrations.md, recipe c):
each outbox-relay release that adds a revision gets one more migration like this one."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_outbox")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0003", revision="outbox_0004")])]
