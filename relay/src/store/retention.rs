//! The SQL behind [`super::Store::purge_selected`] and
//! [`super::Store::live_bytes`], for both backends: one transaction picks at
//! most `limit` events by kind ranges, exclusions and age (oldest first) and
//! deletes them with their tags, through each backend's own `lock_writes`
//! and `delete_seqs`, so retention follows the same write rules as saves.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::common::to_i64;
use super::PurgeSelection;

/// `SELECT seq FROM events WHERE … ORDER BY created_at LIMIT n` for `selection`.
fn select_seqs<'a, DB>(selection: &PurgeSelection, limit: usize) -> QueryBuilder<'a, DB>
where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::<DB>::new("SELECT seq FROM events WHERE (");
    if selection.kinds.is_empty() {
        qb.push("1 = 0");
    }
    for (i, &(low, high)) in selection.kinds.iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        qb.push("kind BETWEEN ")
            .push_bind(i64::from(low))
            .push(" AND ")
            .push_bind(i64::from(high));
    }
    qb.push(")");
    for &kind in &selection.except {
        qb.push(" AND kind <> ").push_bind(i64::from(kind));
    }
    if let Some(before) = selection.created_before {
        qb.push(" AND created_at < ").push_bind(to_i64(before));
    }
    qb.push(" ORDER BY created_at LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    qb
}

/// SQLite: one transaction on the store's write connection.
pub(super) async fn purge_sqlite(
    pool: &sqlx::SqlitePool,
    selection: &PurgeSelection,
    limit: usize,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    super::sqlite::lock_writes(&mut tx).await?;
    let seqs: Vec<i64> = select_seqs::<sqlx::Sqlite>(selection, limit)
        .build_query_scalar()
        .fetch_all(&mut *tx)
        .await?;
    super::sqlite::delete_seqs(&mut tx, &seqs).await?;
    tx.commit().await?;
    Ok(seqs.len() as u64)
}

/// Postgres: one transaction under the write lock every writer takes.
pub(super) async fn purge_postgres(
    pool: &sqlx::PgPool,
    selection: &PurgeSelection,
    limit: usize,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    super::postgres::lock_writes(&mut tx).await?;
    let seqs: Vec<i64> = select_seqs::<sqlx::Postgres>(selection, limit)
        .build_query_scalar()
        .fetch_all(&mut *tx)
        .await?;
    super::postgres::delete_seqs(&mut tx, &seqs).await?;
    tx.commit().await?;
    Ok(seqs.len() as u64)
}

/// SQLite: bytes of the pages in use (the file minus its free list), which
/// shrinks as soon as rows are deleted, unlike the file itself.
pub(super) async fn live_bytes_sqlite(pool: &sqlx::SqlitePool) -> Result<u64, sqlx::Error> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from((pages - free).max(0) * page_size).unwrap_or(0))
}
