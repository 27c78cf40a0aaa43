DROP TABLE outbox_console_sessions;
