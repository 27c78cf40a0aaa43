"""Text from Stripe or an application, made safe to show to a person.

Error codes and messages come from Stripe (or from whatever answers at the configured base URL)
and identifiers, customers and metadata from applications: none of it may drive an operator's
terminal (ESC sequences clear the screen, OSC sets titles and hyperlinks, BEL rings) or reorder
what they read (bidi controls such as U+202E make `gnp.exe` look like `exe.png`). Such
characters are shown as escapes (`\\x1b`, `\\u202e`) instead of being removed, so an operator
sees that something odd was sent.
"""

import re

# C0 and C1 controls, DEL, the bidi embedding/override/isolate controls and marks, and the
# line/paragraph separators (a second line inside one field).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control, bidi or separator character written as an escape."""
    return _UNSAFE.sub(_escape, text)
