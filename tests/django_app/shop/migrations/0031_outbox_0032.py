"""The outbox schema's revision outbox_0032 (the tally deltas UNLOGGED, and the fold's recount
after a crash emptied them) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0030_outbox_0031")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0031", revision="outbox_0032")])]
