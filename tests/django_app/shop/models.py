"""The application's own table, written in the same transaction as the usage fact."""

from django.db import models


class ApiRequest(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    customer = models.CharField(max_length=64)
