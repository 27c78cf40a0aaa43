"""Keep an application's own `alembic revision --autogenerate` away from the outbox's tables.

The outbox's tables are created by its own migrations (`outbox-relay migrate`, or the outbox
branch in your history), not by your models, so autogenerate would propose dropping every one of
them. Pass these hooks in your env.py:

    from outbox.alembic import include_name, include_object
    context.configure(..., target_metadata=Base.metadata,
                      include_name=include_name, include_object=include_object)

Tables are matched by name: every table of the outbox starts with `meter_event_outbox` or
`outbox_` (its version table is `outbox_alembic_version`), tables added later included, so this
needs no update when the outbox's schema grows. Nothing here imports alembic.
"""

from typing import Any

PREFIXES = ("meter_event_outbox", "outbox_")


def is_outbox_table(name: str | None) -> bool:
    """Whether a table (or view) of this name belongs to the outbox."""
    return bool(name) and str(name).startswith(PREFIXES)


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """alembic's `include_name`: the outbox's tables are not even reflected."""
    if type_ == "table":
        return not is_outbox_table(name)
    return not is_outbox_table(parent_names.get("table_name"))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """alembic's `include_object`: no operation on an outbox table or anything on one (index,
    constraint, column)."""
    if type_ == "table":
        return not is_outbox_table(name)
    table = getattr(obj, "table", None)
    return not is_outbox_table(getattr(table, "name", None))
