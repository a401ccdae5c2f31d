//! Backend-neutral pieces of the stores: turning events and filters into the
//! bound values both schemas use, and building the read SQL, which is the same
//! for SQLite and Postgres apart from placeholder syntax (handled by
//! [`QueryBuilder`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use nostr::hashes::{sha256, Hash};
use nostr::{Event, Filter, JsonUtil};
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{QueryContext, QueryRow, SaveOutcome, StoreError, StoredEvent, MAX_BOUND_VALUES};
use crate::kinds::{self, KindClass};

/// Values longer than this are indexed by digest (see [`index_key`]).
const MAX_INLINE_VALUE: usize = 256;

/// The bytes stored and compared for a tag value or `d` tag.
///
/// Short values are kept verbatim so the database stays inspectable; long ones
/// are replaced by a marked SHA-256 digest, because Postgres refuses B-tree
/// rows above ~2.7 KB and one oversized tag must never fail a whole batch.
/// Filters go through the same function, so matching stays exact.
pub(super) fn index_key(value: &str) -> Vec<u8> {
    if value.len() <= MAX_INLINE_VALUE {
        value.as_bytes().to_vec()
    } else {
        let digest = sha256::Hash::hash(value.as_bytes());
        let mut key = b"\0sha256:".to_vec();
        key.extend_from_slice(digest.as_byte_array());
        key
    }
}

/// Clamp a protocol `u64` into the signed 64-bit columns.
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Everything `save_batch` needs from one event, computed before the
/// transaction starts so the database work is only lookups and writes.
#[derive(Debug)]
pub(super) struct PreparedEvent {
    pub id: Vec<u8>,
    pub pubkey: Vec<u8>,
    pub created_at: i64,
    pub kind: i32,
    /// `Some` for replaceable (empty key) and addressable kinds.
    pub d_tag: Option<Vec<u8>>,
    pub expires_at: Option<i64>,
    pub json: String,
    /// Distinct `(letter, index key)` pairs.
    pub tags: Vec<(String, Vec<u8>)>,
    /// For kind 5: the ids named by `e` tags.
    pub deletes_ids: Vec<Vec<u8>>,
    /// For kind 5: those of `deletes_ids` that no `e` tag spells as lowercase
    /// hex. The others need no tombstone row: the kind 5's own `e` tag rows
    /// are its tombstones (see `apply_deletion`); these go to `deleted_ids`.
    pub tombstone_ids: Vec<Vec<u8>>,
    /// For kind 5: `(kind, d key)` of the deleter's own coordinates named by `a` tags.
    pub deletes_coords: Vec<(i32, Vec<u8>)>,
}

impl PreparedEvent {
    pub fn new(event: &Event) -> Self {
        let kind = event.kind.as_u16();
        let tags: BTreeSet<(String, Vec<u8>)> = kinds::indexable_tags(event)
            .map(|(name, value)| (name.to_owned(), index_key(value)))
            .collect();
        // Sets: each target once, so the batched statements of
        // `apply_deletion` never name a row twice (Postgres refuses an upsert
        // that would).
        let mut deletes_ids = BTreeSet::new();
        let mut spelled_canonically = HashSet::new();
        let mut deletes_coords = BTreeSet::new();
        if kind == kinds::KIND_DELETION {
            for value in kinds::tag_values(event, "e") {
                if let Ok(id) = nostr::EventId::from_hex(value) {
                    if is_tombstone_value(value) {
                        spelled_canonically.insert(id.as_bytes().to_vec());
                    }
                    deletes_ids.insert(id.as_bytes().to_vec());
                }
            }
            for value in kinds::tag_values(event, "a") {
                if let Some(coord) = parse_own_coordinate(value, &event.pubkey) {
                    deletes_coords.insert(coord);
                }
            }
        }
        Self {
            id: event.id.as_bytes().to_vec(),
            pubkey: event.pubkey.as_bytes().to_vec(),
            created_at: to_i64(event.created_at.as_secs()),
            kind: i32::from(kind),
            d_tag: kinds::replacement_key(event).map(|d| index_key(&d)),
            expires_at: kinds::expiration(event).map(to_i64),
            json: event.as_json(),
            tags: tags.into_iter().collect(),
            tombstone_ids: deletes_ids
                .iter()
                .filter(|id| !spelled_canonically.contains(*id))
                .cloned()
                .collect(),
            deletes_ids: deletes_ids.into_iter().collect(),
            deletes_coords: deletes_coords.into_iter().collect(),
        }
    }

    /// Deletion requests are exempt from tombstones: NIP-09 says deleting a
    /// deletion has no effect.
    pub fn is_deletion(&self) -> bool {
        self.kind == i32::from(kinds::KIND_DELETION)
    }
}

impl PreparedEvent {
    /// Regular, non-deletion events (notes, reactions, gift wraps…: almost
    /// all traffic) depend only on whether their id is stored or tombstoned,
    /// so [`BatchState`] decides them in memory and they are inserted in bulk.
    pub fn is_plain(&self) -> bool {
        self.d_tag.is_none() && !self.is_deletion()
    }
}

/// What a batch knows about ids, so plain events need no per-event queries.
///
/// Seeded with the rows matching the batch's ids that exist before the batch
/// starts, then kept current as the batch is applied in order: events stored
/// earlier in the batch count as duplicates, and deletions earlier in the
/// batch both tombstone ids and remove them from the known set (so a deleted
/// event re-sent later in the same batch is `Deleted`, exactly as if the
/// events had been saved one by one). Only plain events consult it; every
/// other event goes through the database, after pending inserts are flushed.
#[derive(Debug, Default)]
pub(super) struct BatchState {
    /// id → (pubkey, kind) of stored events.
    known: HashMap<Vec<u8>, (Vec<u8>, i32)>,
    /// (id, deleter) tombstones.
    tombstones: HashSet<(Vec<u8>, Vec<u8>)>,
}

impl BatchState {
    pub fn new(
        known: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, i32)>,
        tombstones: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Self {
        Self {
            known: known
                .into_iter()
                .map(|(id, pubkey, kind)| (id, (pubkey, kind)))
                .collect(),
            tombstones: tombstones.into_iter().collect(),
        }
    }

    /// Outcome of a plain event; a `Stored` one is remembered and must be inserted.
    pub fn decide_plain(&mut self, ev: &PreparedEvent) -> SaveOutcome {
        if self.known.contains_key(&ev.id) {
            SaveOutcome::Duplicate
        } else if self
            .tombstones
            .contains(&(ev.id.clone(), ev.pubkey.clone()))
        {
            SaveOutcome::Deleted
        } else {
            self.known
                .insert(ev.id.clone(), (ev.pubkey.clone(), ev.kind));
            SaveOutcome::Stored
        }
    }

    /// Record a non-plain event the database just stored (and, for a kind 5,
    /// the deletions it applied).
    pub fn record_stored(&mut self, ev: &PreparedEvent) {
        self.known
            .insert(ev.id.clone(), (ev.pubkey.clone(), ev.kind));
        for id in &ev.deletes_ids {
            let deletes = self.known.get(id).is_some_and(|(pubkey, kind)| {
                pubkey == &ev.pubkey && *kind != i32::from(kinds::KIND_DELETION)
            });
            if deletes {
                self.known.remove(id);
            }
            self.tombstones.insert((id.clone(), ev.pubkey.clone()));
        }
    }
}

/// Whether an `e` tag value of a kind 5, as stored in `tags`, is itself the
/// tombstone of the id it names: 64 lowercase hex digits, the spelling
/// [`tombstone_key`] looks up.
pub(super) fn is_tombstone_value(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `tags.value` under which a kind 5's `e` tag names `id` (see
/// [`is_tombstone_value`]).
pub(super) fn tombstone_key(id: &[u8]) -> Vec<u8> {
    hex::encode(id).into_bytes()
}

/// `(id, deleter)` from a `(tags.value, events.pubkey)` row of a kind 5's
/// `e` tag; `None` for a value that is not a tombstone.
pub(super) fn tombstone_from_row(
    (value, pubkey): (Vec<u8>, Vec<u8>),
) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = std::str::from_utf8(&value).ok()?;
    if !is_tombstone_value(value) {
        return None;
    }
    Some((hex::decode(value).ok()?, pubkey))
}

/// Parse `kind:pubkey:d` and keep it only if it names `author`'s own
/// replaceable or addressable event (NIP-09: only the author may delete).
fn parse_own_coordinate(value: &str, author: &nostr::PublicKey) -> Option<(i32, Vec<u8>)> {
    let mut parts = value.splitn(3, ':');
    let kind: u16 = parts.next()?.parse().ok()?;
    let pubkey = nostr::PublicKey::from_hex(parts.next()?).ok()?;
    let d = parts.next().unwrap_or_default();
    if &pubkey != author {
        return None;
    }
    match kinds::classify(kind) {
        KindClass::Replaceable => Some((i32::from(kind), index_key(""))),
        KindClass::Addressable => Some((i32::from(kind), index_key(d))),
        KindClass::Regular | KindClass::Ephemeral => None,
    }
}

/// A filter reduced to bound values. `None` from [`FilterPlan::new`] means the
/// filter can match nothing, so no SQL is run for it.
#[derive(Debug)]
pub(super) struct FilterPlan {
    ids: Vec<Vec<u8>>,
    authors: Vec<Vec<u8>>,
    kinds: Vec<i32>,
    since: Option<i64>,
    until: Option<i64>,
    /// `(letter, values)`, every value set non-empty.
    tags: Vec<(String, Vec<Vec<u8>>)>,
    /// Effective row limit for `query` (`count` ignores it).
    pub limit: usize,
}

impl FilterPlan {
    /// Empty `ids`/`authors`/`kinds` sets mean "no constraint", as in
    /// [`Filter::match_event`], so stored results agree with live fan-out; an
    /// empty `#x` set matches nothing, also as there. NIP-50 `search` is not
    /// supported and matches nothing.
    pub fn new(filter: &Filter, max_limit: usize) -> Option<Self> {
        if filter.search.is_some() {
            return None;
        }
        let since = filter.since.map(|t| to_i64(t.as_secs()));
        let until = filter.until.map(|t| to_i64(t.as_secs()));
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                return None;
            }
        }
        let mut tags = Vec::with_capacity(filter.generic_tags.len());
        for (letter, values) in &filter.generic_tags {
            if values.is_empty() {
                return None;
            }
            let values: BTreeSet<Vec<u8>> = values.iter().map(|v| index_key(v)).collect();
            tags.push((letter.as_char().to_string(), values.into_iter().collect()));
        }
        Some(Self {
            ids: filter
                .ids
                .iter()
                .flatten()
                .map(|id| id.as_bytes().to_vec())
                .collect(),
            authors: filter
                .authors
                .iter()
                .flatten()
                .map(|pk| pk.as_bytes().to_vec())
                .collect(),
            kinds: filter
                .kinds
                .iter()
                .flatten()
                .map(|k| i32::from(k.as_u16()))
                .collect(),
            since,
            until,
            tags,
            limit: filter.limit.unwrap_or(max_limit).min(max_limit),
        })
    }
}

/// The privacy and expiry half of a [`QueryContext`], as bound values.
#[derive(Debug)]
pub(super) struct Visibility {
    /// Viewer pubkeys as stored in `events.pubkey`.
    viewers: Vec<Vec<u8>>,
    /// Viewer pubkeys as `p` tag index keys (lowercase hex).
    viewer_tags: Vec<Vec<u8>>,
    now: i64,
}

impl Visibility {
    pub fn new(ctx: &QueryContext) -> Self {
        let viewers: BTreeSet<_> = ctx.viewers.iter().collect();
        Self {
            viewers: viewers.iter().map(|pk| pk.as_bytes().to_vec()).collect(),
            viewer_tags: viewers.iter().map(|pk| index_key(&pk.to_hex())).collect(),
            now: to_i64(ctx.now),
        }
    }
}

/// What a filter's SELECT returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Select {
    /// `seq, id, created_at, kind, json`, ordered and limited: for `query`.
    Rows,
    /// `seq` only, unordered and unlimited: a `count` arm.
    Seq,
    /// `seq, id, created_at, kind` (no JSON), ordered and limited as
    /// `Rows`: for `sync_items`.
    Items,
}

/// Append one filter's SELECT to `qb`.
///
/// Shape, chosen for the indexes in the migrations: a `#x` condition with a
/// single value drives the query from `tags_lookup` (joined to `events` by
/// `seq`), ordering on the tag row's own `created_at` so the index delivers
/// rows in order and `LIMIT` stops the scan early. Without one, the query
/// starts from `events` and the planner picks id / author / kind / time
/// indexes. Privacy and expiry are part of the WHERE clause, so `LIMIT`
/// counts only rows the viewer may see.
pub(super) fn push_filter_select<'a, DB>(
    qb: &mut QueryBuilder<'a, DB>,
    plan: &FilterPlan,
    vis: &Visibility,
    select: Select,
) where
    DB: Database,
    Vec<u8>: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    i32: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
{
    qb.push(match select {
        Select::Rows => "SELECT e.seq, e.id, e.created_at, e.kind, e.json FROM ",
        Select::Seq => "SELECT e.seq FROM ",
        Select::Items => "SELECT e.seq, e.id, e.created_at, e.kind FROM ",
    });

    let driver = plan.tags.iter().position(|(_, values)| values.len() == 1);
    let (time_col, kind_col) = match driver {
        Some(i) => {
            let (name, values) = &plan.tags[i];
            qb.push("tags d JOIN events e ON e.seq = d.event_seq WHERE d.name = ");
            qb.push_bind(name.clone());
            qb.push(" AND d.value = ");
            qb.push_bind(values[0].clone());
            ("d.created_at", "d.kind")
        }
        None => {
            qb.push("events e WHERE 1 = 1");
            ("e.created_at", "e.kind")
        }
    };

    push_in(qb, "e.id", &plan.ids);
    push_in(qb, "e.pubkey", &plan.authors);
    if !plan.kinds.is_empty() {
        qb.push(" AND ").push(kind_col).push(" IN (");
        let mut list = qb.separated(", ");
        for kind in &plan.kinds {
            list.push_bind(*kind);
        }
        qb.push(")");
    }
    if let Some(since) = plan.since {
        qb.push(" AND ")
            .push(time_col)
            .push(" >= ")
            .push_bind(since);
    }
    if let Some(until) = plan.until {
        qb.push(" AND ")
            .push(time_col)
            .push(" <= ")
            .push_bind(until);
    }

    for (i, (name, values)) in plan.tags.iter().enumerate() {
        if Some(i) == driver {
            continue;
        }
        // The first multi-valued condition (when nothing drives) is an
        // uncorrelated IN, which the planner can use to drive; the rest are
        // correlated EXISTS probes of the tags primary key.
        if driver.is_none() && i == 0 {
            qb.push(" AND e.seq IN (SELECT t.event_seq FROM tags t WHERE t.name = ");
            qb.push_bind(name.clone());
            push_in(qb, "t.value", values);
            qb.push(")");
        } else {
            qb.push(" AND EXISTS (SELECT 1 FROM tags t WHERE t.event_seq = e.seq AND t.name = ");
            qb.push_bind(name.clone());
            push_in(qb, "t.value", values);
            qb.push(")");
        }
    }

    qb.push(" AND (e.expires_at IS NULL OR e.expires_at > ")
        .push_bind(vis.now)
        .push(")");

    crate::privacy::push_may_receive(qb, &vis.viewers, &vis.viewer_tags);

    if select != Select::Seq {
        qb.push(" ORDER BY ")
            .push(time_col)
            .push(" DESC, e.id ASC LIMIT ")
            .push_bind(to_i64(plan.limit as u64));
    }
}

/// ` AND column IN (…)`, or nothing for an empty list (no constraint).
pub(crate) fn push_in<'a, DB>(qb: &mut QueryBuilder<'a, DB>, column: &str, values: &[Vec<u8>])
where
    DB: Database,
    Vec<u8>: Encode<'a, DB> + Type<DB>,
{
    if values.is_empty() {
        return;
    }
    qb.push(" AND ").push(column);
    if let [one] = values {
        qb.push(" = ").push_bind(one.clone());
        return;
    }
    qb.push(" IN (");
    let mut list = qb.separated(", ");
    for value in values {
        list.push_bind(value.clone());
    }
    qb.push(")");
}

/// Build `SELECT COUNT(*)` over the union of the filters' matches; `None`
/// when no filter can match anything.
pub(super) fn count_query<'a, DB>(
    filters: &[Filter],
    ctx: &QueryContext,
) -> Option<QueryBuilder<'a, DB>>
where
    DB: Database,
    <DB as Database>::Arguments<'a>: Default,
    Vec<u8>: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    i32: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
{
    let plans: Vec<FilterPlan> = filters
        .iter()
        .filter_map(|f| FilterPlan::new(f, ctx.max_limit))
        .collect();
    if plans.is_empty() {
        return None;
    }
    let vis = Visibility::new(ctx);
    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM (");
    for (i, plan) in plans.iter().enumerate() {
        if i > 0 {
            // UNION (not UNION ALL): an event matched by two filters counts once.
            qb.push(" UNION ");
        }
        push_filter_select(&mut qb, plan, &vis, Select::Seq);
    }
    qb.push(") AS matched");
    Some(qb)
}

/// Turn a `query` row (`seq, id, created_at, kind, json`) into a
/// [`QueryRow`], keeping the JSON only if it fits in what is left of
/// `hold_json` (which it then reduces). `kind` is generic because the
/// backends decode the column as different integer widths.
pub(super) fn query_row<K: TryInto<u16>>(
    (seq, id, created_at, kind, json): (i64, Vec<u8>, i64, K, String),
    hold_json: &mut usize,
) -> Result<QueryRow, sqlx::Error> {
    let json_len = json.len();
    let json = if json_len <= *hold_json {
        *hold_json -= json_len;
        Some(json)
    } else {
        // Stop holding altogether, so rows stay in order: held ones first.
        *hold_json = 0;
        None
    };
    Ok(QueryRow {
        seq,
        id: id_array(id)?,
        created_at: u64::try_from(created_at).unwrap_or_default(),
        kind: kind.try_into().unwrap_or_default(),
        json_len,
        json,
    })
}

/// A [`QueryRow`] whose JSON was held, as a [`StoredEvent`].
pub(super) fn stored_event(row: QueryRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        id: row.id,
        created_at: row.created_at,
        kind: row.kind,
        json: row
            .json
            .ok_or_else(|| sqlx::Error::Protocol("row read without its JSON".into()))?,
    })
}

/// Refuse, before any SQL, a query that would bind more than
/// [`MAX_BOUND_VALUES`]: its filters' values plus each filter's fixed
/// parameters and the viewers' (COUNT binds every filter in one statement).
pub(super) fn check_bound_values<'a>(
    filters: impl IntoIterator<Item = &'a Filter>,
    ctx: &QueryContext,
) -> Result<(), StoreError> {
    /// since, until, limit, expiry, a driving tag's name and value, and a
    /// name per tag letter are at most this many more per filter.
    const FIXED_PER_FILTER: usize = 8;
    let mut values = 0usize;
    for filter in filters {
        values += crate::matching::filter_values(filter)
            + filter.generic_tags.len()
            + FIXED_PER_FILTER
            + 2 * ctx.viewers.len();
    }
    if values > MAX_BOUND_VALUES {
        return Err(StoreError::TooManyValues {
            values,
            max: MAX_BOUND_VALUES,
        });
    }
    Ok(())
}

/// The error a statement stopped by its [`super::QueryBudget`] ends with:
/// SQLite's `SQLITE_INTERRUPT` (9), Postgres' `query_canceled` (57014).
pub(super) fn budget_error(err: sqlx::Error) -> StoreError {
    let stopped = err
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "9" || code == "57014");
    if stopped {
        StoreError::Timeout
    } else {
        StoreError::Database(err)
    }
}

/// Decode an id column into a fixed array; the schema guarantees 32 bytes,
/// so anything else is reported as a decode error rather than a panic.
pub(super) fn id_array(bytes: Vec<u8>) -> Result<[u8; 32], sqlx::Error> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| sqlx::Error::Decode("stored event id is not 32 bytes".into()))
}

/// Rows per multi-row tag INSERT (5 bound values each: far below SQLite's
/// 32,766 and Postgres' 65,535 parameter limits).
pub(super) const TAG_INSERT_CHUNK: usize = 1000;

/// Rows per multi-row event INSERT (7 bound values each), and ids per lookup
/// where a backend has to list them.
pub(super) const EVENT_CHUNK: usize = 500;

/// Expired events removed per purge transaction, so a large purge never
/// holds the write lock for long.
pub(super) const PURGE_CHUNK: usize = 1000;

/// Define the SQL-running code that is the same for both backends: the
/// write path (`save_batch_on`, `purge_expired_on`, and under them
/// `save_all`, `insert_plain`, `insert_events`, `insert_tags`, `save_one`,
/// `apply_deletion`) and the reads behind `query` and `count`
/// (`query_events`, `count_events`).
///
/// The logic is identical for both backends; only the database type differs
/// (placeholders come from [`QueryBuilder`]). It is a macro rather than
/// functions generic over [`Database`] because *running* a `QueryBuilder`
/// generically needs a wall of bounds: the executor HRTB, `Encode + Type`
/// for each of `&[u8]`, `&str`, `Option<&[u8]>`, `Option<i64>`, `i64`,
/// `i32`, `FromRow` for every result tuple, and `IntoArguments` for the
/// arguments across the shorter borrow `build()` takes, which sqlx 0.8.0
/// only provides for SQLite at the arguments' own lifetime, so the natural
/// `for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>` does not borrow-check.
/// Building SQL needs only the `Encode + Type` bounds, so that part
/// ([`push_filter_select`], [`count_query`]) stays generic; the expansions
/// here are ordinary code, type-checked against each concrete backend.
///
/// The invoking module must provide what genuinely differs per backend:
/// - `async fn lock_writes(&mut $conn) -> Result<(), sqlx::Error>`, run first
///   in every write transaction (Postgres' advisory lock; a no-op for SQLite),
/// - `async fn lookup_batch(&mut $conn, &[PreparedEvent]) -> Result<BatchState, sqlx::Error>`
///   (ids already stored or tombstoned; `= ANY($1)` vs chunked `IN (…)`),
/// - `async fn delete_seqs(&mut $conn, &[i64])` (which must call the
///   expansion's `keep_tombstones` before removing anything) and
///   `async fn delete_tags(&mut $conn, &[i64])`,
///
/// and passes the SQL name of the two-argument maximum (`GREATEST` / `max`)
/// and the integer type its driver decodes `events.kind` as (`i32` / `i64`).
macro_rules! backend_sql {
    ($db:ty, $conn:ty, greatest = $greatest:literal, kind = $kind:ty) => {
        /// `Store::save_batch`: the whole batch in one transaction on `conn`
        /// (a pool or one connection).
        // Postgres saves through its own version, which also NOTIFYs.
        #[allow(dead_code)]
        async fn save_batch_on<'c, A>(
            conn: A,
            events: &[nostr::Event],
        ) -> Result<Vec<$crate::store::SaveOutcome>, sqlx::Error>
        where
            A: sqlx::Acquire<'c, Database = $db>,
        {
            use $crate::store::common::PreparedEvent;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let prepared: Vec<PreparedEvent> = events.iter().map(PreparedEvent::new).collect();
            let mut tx = conn.begin().await?;
            lock_writes(&mut tx).await?;
            let outcomes = save_all(&mut tx, &prepared).await?;
            tx.commit().await?;
            Ok(outcomes)
        }

        /// `Store::purge_expired`: delete events expired at `now`, in
        /// transactions of at most `PURGE_CHUNK` events.
        async fn purge_expired_on(pool: &sqlx::Pool<$db>, now: u64) -> Result<u64, sqlx::Error> {
            use $crate::store::common::PURGE_CHUNK;
            let now = $crate::store::common::to_i64(now);
            let mut purged = 0u64;
            loop {
                let mut tx = pool.begin().await?;
                lock_writes(&mut tx).await?;
                let mut qb =
                    sqlx::QueryBuilder::<$db>::new("SELECT seq FROM events WHERE expires_at <= ");
                qb.push_bind(now)
                    .push(" LIMIT ")
                    .push_bind(PURGE_CHUNK as i64);
                let seqs: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
                delete_seqs(&mut tx, &seqs).await?;
                tx.commit().await?;
                purged += seqs.len() as u64;
                if seqs.len() < PURGE_CHUNK {
                    return Ok(purged);
                }
            }
        }

        /// Run one filter's `query` SELECT, streaming its rows and keeping
        /// JSON for at most `hold_json` bytes of them; no SQL when the filter
        /// can match nothing or its limit is 0.
        async fn query_rows_on(
            conn: &mut $conn,
            filter: &nostr::Filter,
            ctx: &$crate::store::QueryContext,
            mut hold_json: usize,
        ) -> Result<Vec<$crate::store::QueryRow>, sqlx::Error> {
            use futures::TryStreamExt;
            use $crate::store::common::{push_filter_select, FilterPlan, Select, Visibility};
            let Some(plan) = FilterPlan::new(filter, ctx.max_limit) else {
                return Ok(Vec::new());
            };
            if plan.limit == 0 {
                return Ok(Vec::new());
            }
            let mut qb = sqlx::QueryBuilder::<$db>::new("");
            push_filter_select(&mut qb, &plan, &Visibility::new(ctx), Select::Rows);
            let mut out = Vec::new();
            let mut rows = qb
                .build_query_as::<(i64, Vec<u8>, i64, $kind, String)>()
                .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                out.push($crate::store::common::query_row(row, &mut hold_json)?);
            }
            Ok(out)
        }

        /// `Store::sync_items`: one filter's matches without their JSON,
        /// at most `max_items + 1` rows read (the last one only to tell
        /// that there are too many).
        async fn sync_items_on(
            conn: &mut $conn,
            filter: &nostr::Filter,
            ctx: &$crate::store::QueryContext,
            max_items: usize,
        ) -> Result<Vec<$crate::store::SyncItem>, $crate::store::StoreError> {
            use futures::TryStreamExt;
            use $crate::store::common::{push_filter_select, FilterPlan, Select, Visibility};
            let Some(plan) = FilterPlan::new(filter, max_items.saturating_add(1)) else {
                return Ok(Vec::new());
            };
            if plan.limit == 0 {
                return Ok(Vec::new());
            }
            let mut qb = sqlx::QueryBuilder::<$db>::new("");
            push_filter_select(&mut qb, &plan, &Visibility::new(ctx), Select::Items);
            let mut out = Vec::new();
            let mut rows = qb
                .build_query_as::<(i64, Vec<u8>, i64, $kind)>()
                .fetch(&mut *conn);
            while let Some((seq, id, created_at, kind)) = rows
                .try_next()
                .await
                .map_err($crate::store::common::budget_error)?
            {
                if out.len() == max_items {
                    return Err($crate::store::StoreError::TooManyItems { max: max_items });
                }
                out.push($crate::store::SyncItem {
                    seq,
                    id: $crate::store::common::id_array(id)?,
                    created_at: u64::try_from(created_at).unwrap_or_default(),
                    kind: kind.try_into().unwrap_or_default(),
                });
            }
            Ok(out)
        }

        /// `(seq, id, json)` of the events with these seqs, in chunks.
        async fn fetch_json_on(
            conn: &mut $conn,
            seqs: &[i64],
        ) -> Result<Vec<(i64, Vec<u8>, String)>, sqlx::Error> {
            let mut out = Vec::with_capacity(seqs.len());
            for chunk in seqs.chunks($crate::store::common::EVENT_CHUNK) {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT seq, id, json FROM events WHERE seq IN (",
                );
                let mut list = qb.separated(", ");
                for seq in chunk {
                    list.push_bind(*seq);
                }
                qb.push(")");
                out.extend(
                    qb.build_query_as::<(i64, Vec<u8>, String)>()
                        .fetch_all(&mut *conn)
                        .await?,
                );
            }
            Ok(out)
        }

        /// Count the events matching any of `filters`.
        async fn count_events(
            conn: &mut $conn,
            filters: &[nostr::Filter],
            ctx: &$crate::store::QueryContext,
        ) -> Result<u64, sqlx::Error> {
            let Some(mut qb) = $crate::store::common::count_query::<$db>(filters, ctx) else {
                return Ok(0);
            };
            let n: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
            Ok(u64::try_from(n).unwrap_or_default())
        }

        /// Apply a batch in order inside the caller's transaction. Plain
        /// events are decided by `BatchState` and inserted in bulk; the rest
        /// (replaceable, addressable, deletions) go one by one after pending
        /// inserts are flushed, so they see everything before them.
        async fn save_all(
            conn: &mut $conn,
            prepared: &[$crate::store::common::PreparedEvent],
        ) -> Result<Vec<$crate::store::SaveOutcome>, sqlx::Error> {
            use $crate::store::SaveOutcome;
            let mut state = lookup_batch(conn, prepared).await?;
            let mut outcomes = Vec::with_capacity(prepared.len());
            let mut pending = Vec::new();
            for ev in prepared {
                if ev.is_plain() {
                    let outcome = state.decide_plain(ev);
                    if outcome == SaveOutcome::Stored {
                        pending.push(ev);
                    }
                    outcomes.push(outcome);
                } else {
                    insert_plain(conn, &mut pending).await?;
                    let outcome = save_one(conn, ev).await?;
                    if outcome == SaveOutcome::Stored {
                        state.record_stored(ev);
                    }
                    outcomes.push(outcome);
                }
            }
            insert_plain(conn, &mut pending).await?;
            Ok(outcomes)
        }

        /// Bulk-insert events already decided `Stored`, with their tags.
        async fn insert_plain(
            conn: &mut $conn,
            pending: &mut Vec<&$crate::store::common::PreparedEvent>,
        ) -> Result<(), sqlx::Error> {
            for chunk in pending.chunks($crate::store::common::EVENT_CHUNK) {
                let mut qb = insert_events(chunk);
                // RETURNING order is unspecified, so map seqs back by id.
                qb.push(" RETURNING id, seq");
                let seqs: std::collections::HashMap<Vec<u8>, i64> = qb
                    .build_query_as::<(Vec<u8>, i64)>()
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .collect();
                let mut rows = Vec::new();
                for ev in chunk {
                    let seq = *seqs
                        .get(&ev.id)
                        .ok_or_else(|| sqlx::Error::Protocol("inserted event has no seq".into()))?;
                    rows.extend(ev.tags.iter().map(|tag| (seq, tag, *ev)));
                }
                insert_tags(conn, &rows).await?;
            }
            pending.clear();
            Ok(())
        }

        /// `INSERT INTO events … VALUES …` for `events`, without `RETURNING`.
        fn insert_events<'a>(
            events: &[&'a $crate::store::common::PreparedEvent],
        ) -> sqlx::QueryBuilder<'a, $db> {
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO events (id, pubkey, created_at, kind, d_tag, expires_at, json) ",
            );
            qb.push_values(events.iter().copied(), |mut row, ev| {
                row.push_bind(ev.id.as_slice())
                    .push_bind(ev.pubkey.as_slice())
                    .push_bind(ev.created_at)
                    .push_bind(ev.kind)
                    .push_bind(ev.d_tag.as_deref())
                    .push_bind(ev.expires_at)
                    .push_bind(ev.json.as_str());
            });
            qb
        }

        /// Insert `(event seq, tag, event)` rows into `tags`, in chunks.
        async fn insert_tags(
            conn: &mut $conn,
            rows: &[(
                i64,
                &(String, Vec<u8>),
                &$crate::store::common::PreparedEvent,
            )],
        ) -> Result<(), sqlx::Error> {
            for rows in rows.chunks($crate::store::common::TAG_INSERT_CHUNK) {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO tags (event_seq, name, value, created_at, kind) ",
                );
                qb.push_values(rows, |mut row, (seq, (name, value), ev)| {
                    row.push_bind(*seq)
                        .push_bind(name.as_str())
                        .push_bind(value.as_slice())
                        .push_bind(ev.created_at)
                        .push_bind(ev.kind);
                });
                qb.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        async fn save_one(
            conn: &mut $conn,
            ev: &$crate::store::common::PreparedEvent,
        ) -> Result<$crate::store::SaveOutcome, sqlx::Error> {
            use $crate::store::SaveOutcome;
            let mut qb =
                sqlx::QueryBuilder::<$db>::new("SELECT EXISTS (SELECT 1 FROM events WHERE id = ");
            qb.push_bind(ev.id.as_slice())
                .push("), EXISTS (SELECT 1 FROM deleted_ids WHERE id = ")
                .push_bind(ev.id.as_slice())
                .push(" AND pubkey = ")
                .push_bind(ev.pubkey.as_slice())
                .push(concat!(
                    ") OR EXISTS (SELECT 1 FROM tags t JOIN events d ON d.seq = t.event_seq",
                    " WHERE t.name = 'e' AND t.kind = 5 AND t.value = "
                ))
                .push_bind($crate::store::common::tombstone_key(&ev.id))
                .push(" AND d.pubkey = ")
                .push_bind(ev.pubkey.as_slice())
                .push(")");
            let (duplicate, tombstoned): (bool, bool) =
                qb.build_query_as().fetch_one(&mut *conn).await?;
            if duplicate {
                return Ok(SaveOutcome::Duplicate);
            }
            if tombstoned && !ev.is_deletion() {
                return Ok(SaveOutcome::Deleted);
            }

            if let Some(d_tag) = &ev.d_tag {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT deleted_up_to FROM deleted_coords WHERE pubkey = ",
                );
                qb.push_bind(ev.pubkey.as_slice())
                    .push(" AND kind = ")
                    .push_bind(ev.kind)
                    .push(" AND d_tag = ")
                    .push_bind(d_tag.as_slice());
                let deleted_up_to: Option<i64> =
                    qb.build_query_scalar().fetch_optional(&mut *conn).await?;
                if deleted_up_to.is_some_and(|up_to| up_to >= ev.created_at) {
                    return Ok(SaveOutcome::Deleted);
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT seq, created_at, id FROM events WHERE pubkey = ",
                );
                qb.push_bind(ev.pubkey.as_slice())
                    .push(" AND kind = ")
                    .push_bind(ev.kind)
                    .push(" AND d_tag = ")
                    .push_bind(d_tag.as_slice());
                let current: Option<(i64, i64, Vec<u8>)> =
                    qb.build_query_as().fetch_optional(&mut *conn).await?;
                if let Some((seq, created_at, id)) = current {
                    if created_at > ev.created_at || (created_at == ev.created_at && id < ev.id) {
                        return Ok(SaveOutcome::Superseded);
                    }
                    delete_seqs(conn, &[seq]).await?;
                }
            }

            let mut qb = insert_events(&[ev]);
            qb.push(" RETURNING seq");
            let seq: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;

            let rows: Vec<_> = ev.tags.iter().map(|tag| (seq, tag, ev)).collect();
            insert_tags(conn, &rows).await?;

            if ev.is_deletion() {
                apply_deletion(conn, ev).await?;
            }
            Ok(SaveOutcome::Stored)
        }

        /// NIP-09: remove the deleter's own events named by `e` and `a` tags
        /// and remember them, so they cannot be stored again.
        ///
        /// Batched: a few statements per [`EVENT_CHUNK`] targets, not two per
        /// tag, so a kind 5 with thousands of tags holds the single writer
        /// (and every client's OK behind it) only briefly.
        ///
        /// Ids named by `e` need no row of their own: the kind 5's `e` tag
        /// rows, already in `tags` (and its `tags_lookup` index), are the
        /// tombstones ([`tombstones_of`] reads them), which halves the index
        /// rows a large deletion writes. Only an id whose every `e` tag
        /// spells it otherwise than in lowercase hex gets a `deleted_ids`
        /// row, as do all of a kind 5's when it is itself removed
        /// ([`keep_tombstones`]).
        ///
        /// [`EVENT_CHUNK`]: $crate::store::common::EVENT_CHUNK
        async fn apply_deletion(
            conn: &mut $conn,
            ev: &$crate::store::common::PreparedEvent,
        ) -> Result<(), sqlx::Error> {
            use $crate::store::common::EVENT_CHUNK;
            for ids in ev.deletes_ids.chunks(EVENT_CHUNK) {
                // Deleting a deletion request has no effect (NIP-09).
                let mut qb = sqlx::QueryBuilder::<$db>::new("DELETE FROM events WHERE pubkey = ");
                qb.push_bind(ev.pubkey.as_slice()).push(" AND kind <> 5");
                $crate::store::push_in(&mut qb, "id", ids);
                qb.push(" RETURNING seq");
                let seqs: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
                delete_tags(conn, &seqs).await?;
            }
            let pubkey = ev.pubkey.as_slice();
            let rows: Vec<(&[u8], &[u8])> = ev
                .tombstone_ids
                .iter()
                .map(|id| (id.as_slice(), pubkey))
                .collect();
            insert_tombstones(conn, &rows).await?;
            for coords in ev.deletes_coords.chunks(EVENT_CHUNK) {
                let mut qb = sqlx::QueryBuilder::<$db>::new("DELETE FROM events WHERE pubkey = ");
                qb.push_bind(ev.pubkey.as_slice())
                    .push(" AND created_at <= ")
                    .push_bind(ev.created_at)
                    .push(" AND (kind, d_tag) IN (VALUES ");
                let mut list = qb.separated(", ");
                for (kind, d_tag) in coords {
                    list.push("(")
                        .push_bind_unseparated(*kind)
                        .push_unseparated(", ")
                        .push_bind_unseparated(d_tag.as_slice())
                        .push_unseparated(")");
                }
                qb.push(") RETURNING seq");
                let seqs: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
                delete_tags(conn, &seqs).await?;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO deleted_coords (pubkey, kind, d_tag, deleted_up_to) ",
                );
                qb.push_values(coords, |mut row, (kind, d_tag)| {
                    row.push_bind(ev.pubkey.as_slice())
                        .push_bind(*kind)
                        .push_bind(d_tag.as_slice())
                        .push_bind(ev.created_at);
                });
                qb.push(concat!(
                    " ON CONFLICT (pubkey, kind, d_tag) DO UPDATE SET deleted_up_to = ",
                    $greatest,
                    "(deleted_coords.deleted_up_to, excluded.deleted_up_to)"
                ));
                qb.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// `(id, deleter)` tombstones of `ids`: the `e` tag rows of stored
        /// kind 5 events (see `apply_deletion`) and `deleted_ids`.
        async fn tombstones_of(
            conn: &mut $conn,
            ids: &[&[u8]],
        ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
            use $crate::store::common::{tombstone_from_row, tombstone_key, EVENT_CHUNK};
            let mut out = Vec::new();
            for chunk in ids.chunks(EVENT_CHUNK) {
                if chunk.is_empty() {
                    continue;
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT t.value, e.pubkey FROM tags t JOIN events e ON e.seq = t.event_seq",
                    " WHERE t.name = 'e' AND t.kind = 5 AND t.value IN ("
                ));
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(tombstone_key(id));
                }
                qb.push(")");
                let rows: Vec<(Vec<u8>, Vec<u8>)> =
                    qb.build_query_as().fetch_all(&mut *conn).await?;
                out.extend(rows.into_iter().filter_map(tombstone_from_row));

                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, pubkey FROM deleted_ids WHERE id IN (",
                );
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                qb.push(")");
                out.extend(
                    qb.build_query_as::<(Vec<u8>, Vec<u8>)>()
                        .fetch_all(&mut *conn)
                        .await?,
                );
            }
            Ok(out)
        }

        /// `INSERT INTO deleted_ids` for `(id, deleter)` rows, in chunks.
        async fn insert_tombstones(
            conn: &mut $conn,
            rows: &[(&[u8], &[u8])],
        ) -> Result<(), sqlx::Error> {
            for chunk in rows.chunks($crate::store::common::EVENT_CHUNK) {
                let mut qb =
                    sqlx::QueryBuilder::<$db>::new("INSERT INTO deleted_ids (id, pubkey) ");
                qb.push_values(chunk, |mut row, (id, pubkey)| {
                    row.push_bind(*id).push_bind(*pubkey);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Before events are removed (expiry, retention, replacement): the
        /// tombstones held by the `e` tags of the kind 5 events among them
        /// move to `deleted_ids`, so deleted events still cannot come back
        /// once their deletion request is gone.
        async fn keep_tombstones(conn: &mut $conn, seqs: &[i64]) -> Result<(), sqlx::Error> {
            use $crate::store::common::{tombstone_from_row, EVENT_CHUNK};
            for chunk in seqs.chunks(EVENT_CHUNK) {
                if chunk.is_empty() {
                    continue;
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT t.value, e.pubkey FROM events e JOIN tags t ON t.event_seq = e.seq",
                    " WHERE e.kind = 5 AND t.name = 'e' AND e.seq IN ("
                ));
                let mut list = qb.separated(", ");
                for seq in chunk {
                    list.push_bind(*seq);
                }
                qb.push(")");
                let found: std::collections::BTreeSet<(Vec<u8>, Vec<u8>)> = qb
                    .build_query_as::<(Vec<u8>, Vec<u8>)>()
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .filter_map(tombstone_from_row)
                    .collect();
                let rows: Vec<(&[u8], &[u8])> = found
                    .iter()
                    .map(|(id, pubkey)| (id.as_slice(), pubkey.as_slice()))
                    .collect();
                insert_tombstones(conn, &rows).await?;
            }
            Ok(())
        }
    };
}

pub(super) use backend_sql;
