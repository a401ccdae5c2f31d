-- Cairn event store (SQLite).
--
-- Values that take part in equality lookups (tag values, `d` tags) are stored
-- as BLOB index keys: the raw UTF-8 bytes, or a SHA-256 digest behind a
-- marker for values longer than 256 bytes, so index rows stay small.

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         BLOB    NOT NULL,
    pubkey     BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    -- Replacement key: NULL for regular kinds, empty for replaceable kinds,
    -- the `d` tag's index key for addressable kinds.
    d_tag      BLOB,
    -- NIP-40 expiration (unix seconds), NULL when the event never expires.
    expires_at INTEGER,
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
    event_seq  INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    PRIMARY KEY (event_seq, name, value)
) WITHOUT ROWID;

CREATE INDEX tags_lookup ON tags (name, value, created_at, kind);

-- NIP-09 deletions by `e`: the id may not be stored again by this author.
CREATE TABLE deleted_ids (
    id     BLOB NOT NULL,
    pubkey BLOB NOT NULL,
    PRIMARY KEY (id, pubkey)
) WITHOUT ROWID;

-- NIP-09 deletions by `a`: versions up to `deleted_up_to` are refused.
CREATE TABLE deleted_coords (
    pubkey        BLOB    NOT NULL,
    kind          INTEGER NOT NULL,
    d_tag         BLOB    NOT NULL,
    deleted_up_to INTEGER NOT NULL,
    PRIMARY KEY (pubkey, kind, d_tag)
) WITHOUT ROWID;
