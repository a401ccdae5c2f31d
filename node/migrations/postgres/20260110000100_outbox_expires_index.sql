-- The worker prunes finished items by their end of life
-- (`expires_at < now - [outbox] retention_secs`); without this index that is
-- a scan of every item ever sent.
CREATE INDEX outbox_items_expires ON outbox_items (expires_at);
