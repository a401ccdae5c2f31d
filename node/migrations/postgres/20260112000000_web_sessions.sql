-- The owner's web sessions and spent one-time form tokens (node/src/web/store.rs),
-- in the node's database so that every process sharing it sees them.

-- One row per signed-in session. Only the SHA-256 of the session id (hex) is
-- kept, never the id itself.
CREATE TABLE web_sessions (
    id_hash    TEXT    PRIMARY KEY,
    -- The token every form of this session carries (shown in its pages).
    csrf       TEXT    NOT NULL,
    -- Unix milliseconds of sign-in: the oldest session is ended first.
    started_ms BIGINT  NOT NULL,
    -- Unix seconds after which the session is refused (and deleted).
    expires_at BIGINT  NOT NULL
);

-- One row per spent one-time token of a paying form (SHA-256, hex), kept
-- until no live session could post that form again.
CREATE TABLE web_spent_tokens (
    token_hash TEXT    PRIMARY KEY,
    spent_at   BIGINT  NOT NULL
);

CREATE INDEX web_spent_tokens_spent_at ON web_spent_tokens (spent_at);
