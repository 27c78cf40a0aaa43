"""The outbox schema's revision outbox_0028 (the cancel trigger fires only when a pending row
leaves pending) as its own Django migration."""

from django.db import migrations

from relay.migrate import schema_sql


class Migration(migrations.Migration):
    dependencies = [("shop", "0026_outbox_0027")]
    operations = [migrations.RunSQL([schema_sql(start="outbox_0027", revision="outbox_0028")])]
