"""Controls and bidi characters from Stripe or applications are shown as escapes."""

from relay.core.visible import visible


def test_terminal_controls_and_bidi_are_shown_as_escapes() -> None:
    hostile = "a\x1b[2J\x07\x1b]0;owned\x07\u202egnp.exe\x9b\u2066x\u2028y\x7f"
    shown = visible(hostile)
    assert shown == ("a\\x1b[2J\\x07\\x1b]0;owned\\x07\\u202egnp.exe\\x9b\\u2066x\\u2028y\\x7f")
    assert shown.isprintable()


def test_ordinary_text_is_unchanged() -> None:
    for text in ["cus_1", "Zürich – 東京 🎉 [bold]", "meter_event_customer_not_found", ""]:
        assert visible(text) == text
