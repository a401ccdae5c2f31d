-- The node's outbox (node/src/outbox): events the owner sends, kept until
-- every destination relay accepted them, refused them for good, or their
-- time to live ran out.

-- One row per event to deliver (a gift wrap, the copy to self, the owner's
-- kind 10050 list).
CREATE TABLE outbox_items (
    id         BIGSERIAL PRIMARY KEY,
    event_id   TEXT    NOT NULL UNIQUE,
    event_json TEXT    NOT NULL,
    -- What it is: `message`, `copy` (the copy to self) or `inbox-list`.
    role       TEXT    NOT NULL,
    -- Who the gift wrap is for (hex key); the author for a kind 10050.
    recipient  TEXT    NOT NULL,
    -- The message (rumor) id shared by a message's wraps; NULL for a list.
    rumor_id   TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX outbox_items_created ON outbox_items (created_at);

-- One row per (event, destination relay). `state` is `queued`, `retrying`,
-- `delivered`, `failed` (refused for good) or `expired`.
CREATE TABLE outbox_deliveries (
    item_id         BIGINT  NOT NULL REFERENCES outbox_items (id) ON DELETE CASCADE,
    relay           TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- Unix seconds of the next try (pending rows), also the claim of a
    -- worker that loaded the row (pushed past its sending time).
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    delivered_at    BIGINT,
    -- The accepting relay's OK message (e.g. `duplicate: …`).
    ok_message      TEXT,
    PRIMARY KEY (item_id, relay)
);

-- The worker's scan: pending rows by relay and due time.
CREATE INDEX outbox_pending ON outbox_deliveries (relay, next_attempt_at)
    WHERE state IN ('queued', 'retrying');
CREATE INDEX outbox_due ON outbox_deliveries (next_attempt_at)
    WHERE state IN ('queued', 'retrying');
