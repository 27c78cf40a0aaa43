-- One row per signed-in console browser. The cookie is signed with the console token and names
-- its session; a request is signed in only while its row is here, so sign-out deletes the row
-- and the cookie is dead everywhere at once. The id is a SHA-256 of the cookie's random part:
-- someone who can read this table still cannot build a cookie (that needs the token too).
-- Expired rows are removed on each sign-in, so the table stays as small as the number of
-- operators.
CREATE TABLE outbox_console_sessions (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
COMMENT ON TABLE outbox_console_sessions IS
    'Signed-in outbox-relay console sessions (hashed ids); sign-out deletes the row.';
