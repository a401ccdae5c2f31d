-- Cairn identity registry (SQLite). The source of truth for the registry:
-- at start the node replays these rows into its in-memory log, state tree
-- and registry (see identity/src/service/mod.rs). Anchor transactions and
-- the wallet live in the anchoring wallet's own file (anchor.sqlite).

-- Challenges issued by POST /identity/v1/challenges. `used` flips to 1 in
-- the same transaction that logs the operation quoting the nonce.
CREATE TABLE identity_challenges (
    nonce      TEXT    PRIMARY KEY,
    -- Hex x-only key the challenge was issued for.
    pubkey     TEXT    NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX identity_challenges_expires ON identity_challenges (expires_at);

-- Accepted operations in log order. `log_index` is the operation's leaf;
-- a bind/recover's attestation sits at `attestation_index` = log_index - 1.
CREATE TABLE identity_operations (
    log_index         INTEGER PRIMARY KEY,
    event_id          TEXT    NOT NULL UNIQUE,
    x_uid             INTEGER NOT NULL,
    event_json        TEXT    NOT NULL,
    attestation_json  TEXT,
    attestation_index INTEGER,
    -- The epoch the operation was logged in and the block height the
    -- registry used (recovery delays are measured in blocks).
    epoch             INTEGER NOT NULL,
    height            INTEGER NOT NULL,
    accepted_at       INTEGER NOT NULL
);

CREATE INDEX identity_operations_x_uid ON identity_operations (x_uid);

-- Closed epochs: the 113-byte header (hex) and its anchor txid once known.
CREATE TABLE identity_epochs (
    epoch        INTEGER PRIMARY KEY,
    header       TEXT    NOT NULL,
    -- Height used to complete pending recoveries when the epoch closed.
    close_height INTEGER NOT NULL,
    anchor_txid  TEXT,
    closed_at    INTEGER NOT NULL
);
