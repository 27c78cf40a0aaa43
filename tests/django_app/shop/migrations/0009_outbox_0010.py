"""The outbox schema's revision outbox_0010 (least privilege) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0008_outbox_0009")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0009", revision="outbox_0010")])]
