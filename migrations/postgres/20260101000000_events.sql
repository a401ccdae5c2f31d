-- Cairn event store (PostgreSQL).
--
-- Values that take part in equality lookups (tag values, `d` tags) are stored
-- as BYTEA index keys: the raw UTF-8 bytes, or a SHA-256 digest behind a
-- marker for values longer than 256 bytes. BYTEA (not TEXT) because Nostr
-- strings may contain NUL, which TEXT rejects, and the digest keeps index rows
-- far below the B-tree row size limit.

CREATE TABLE events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         BYTEA   NOT NULL,
    pubkey     BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL,
    kind       INTEGER NOT NULL,
    -- Replacement key: NULL for regular kinds, empty for replaceable kinds,
    -- the `d` tag's index key for addressable kinds.
    d_tag      BYTEA,
    -- NIP-40 expiration (unix seconds), NULL when the event never expires.
    expires_at BIGINT,
    json       TEXT    NOT NULL
);

CREATE UNIQUE INDEX events_id ON events (id);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_author_created ON events (pubkey, created_at);
CREATE INDEX events_author_kind_created ON events (pubkey, kind, created_at);
CREATE INDEX events_kind_created ON events (kind, created_at);
CREATE UNIQUE INDEX events_replaceable ON events (pubkey, kind, d_tag) WHERE d_tag IS NOT NULL;
CREATE INDEX events_expires ON events (expires_at) WHERE expires_at IS NOT NULL;

-- Single-letter tags, one row per distinct (event, letter, value). created_at
-- and kind are copied from the event so `#x` queries are answered in order
-- from the index alone before touching `events`.
CREATE TABLE tags (
    event_seq  BIGINT  NOT NULL,
    name       TEXT    NOT NULL,
    value      BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL,
    kind       INTEGER NOT NULL,
    PRIMARY KEY (event_seq, name, value)
);

CREATE INDEX tags_lookup ON tags (name, value, created_at, kind);

-- NIP-09 deletions by `e`: the id may not be stored again by this author.
CREATE TABLE deleted_ids (
    id     BYTEA NOT NULL,
    pubkey BYTEA NOT NULL,
    PRIMARY KEY (id, pubkey)
);

-- NIP-09 deletions by `a`: versions up to `deleted_up_to` are refused.
CREATE TABLE deleted_coords (
    pubkey        BYTEA   NOT NULL,
    kind          INTEGER NOT NULL,
    d_tag         BYTEA   NOT NULL,
    deleted_up_to BIGINT  NOT NULL,
    PRIMARY KEY (pubkey, kind, d_tag)
);
