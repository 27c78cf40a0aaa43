"""A real Django project using outbox-relay (docs/migrations.md, recipe c); run by
tests/adoption/test_django.py with DJANGO_DATABASE_URL set."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
