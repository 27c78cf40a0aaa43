"""What the operator commands print: every text that came from Stripe or an application goes
through `visible` (no terminal control, no bidi reordering) and, in rich tables, is a `Text`
(never parsed as rich markup, so a code like `[/]` is shown, not interpreted)."""

import click
from rich.text import Text

from relay.core.visible import visible


def echo(line: str, err: bool = False) -> None:
    """One line, controls and bidi characters shown as escapes."""
    click.echo(visible(line), err=err)


def cell(value: object) -> Text:
    """A rich table cell shown literally."""
    return Text(visible(str(value)))
