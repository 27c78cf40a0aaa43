"""The outbox schema's revision outbox_0033 (the stored `payload` column dropped, the function
that answers earlier releases' `o.payload`) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0031_outbox_0032")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0032", revision="outbox_0033")])]
