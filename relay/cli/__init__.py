"""The operator surface: the `outbox-relay` sub-commands, their flags, and the demo."""
