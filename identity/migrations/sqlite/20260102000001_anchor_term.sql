-- The anchoring term (see identity/src/service/anchoring.rs): each process
-- that starts anchoring raises it by one and anchors only while the stored
-- term is still its own. Checked in the transaction around each anchor's
-- signing and broadcast and in the one that records an anchor txid, so an
-- old holder cannot anchor after a new one took over.
CREATE TABLE identity_anchor_term (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    term INTEGER NOT NULL
);

INSERT INTO identity_anchor_term (id, term) VALUES (0, 0);
