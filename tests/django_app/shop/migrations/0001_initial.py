"""The application's own first migration."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="ApiRequest",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("request_id", models.CharField(max_length=64, unique=True)),
                ("customer", models.CharField(max_length=64)),
            ],
        ),
    ]
