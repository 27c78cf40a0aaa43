"""`manage.py bill_request REQUEST_ID CUSTOMER [--fail]`: the application's write (idempotent)
and its usage fact in one `transaction.atomic()`, through a Django cursor; --fail rolls both
back."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

import outbox
from shop.models import ApiRequest


class Rollback(Exception):
    """Raised inside the atomic block to abandon it."""


class Command(BaseCommand):
    help = "Record one API request and its usage fact in one transaction."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("request_id")
        parser.add_argument("customer")
        parser.add_argument("--fail", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        request_id, customer = options["request_id"], options["customer"]
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                ApiRequest.objects.get_or_create(request_id=request_id, customer=customer)
                recorded = outbox.record_usage(
                    cursor,
                    event_name="api_calls",
                    customer=customer,
                    value=1,
                    identifier=f"api-req-{request_id}",
                )
                if options["fail"]:
                    raise Rollback
        except Rollback:
            self.stdout.write("rolled back")
            return
        self.stdout.write(f"recorded {recorded.identifier} created={recorded.created}")
