//! Anchor records and the epoch queue, in the same SQLite file as the wallet
//! (bdk_wallet's tables live next to these), so one file holds everything
//! needed to continue the anchor chain after a restart.

use bdk_wallet::rusqlite::{self, params, Connection, OptionalExtension};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Amount, BlockHash, OutPoint, Transaction, Txid};

use super::plan::Stored;

/// Stored-data failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("anchor database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row does not decode (hand-edited or corrupted file).
    #[error("anchor database: corrupt row for epoch {epoch}: {what}")]
    Corrupt {
        /// The epoch of the row.
        epoch: u64,
        /// What failed to decode.
        what: &'static str,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cairn_anchor_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cairn_anchor (
    epoch INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'signed', 'unconfirmed', 'confirmed')),
    txid TEXT,
    raw_tx BLOB,
    fee_sat INTEGER,
    change_vout INTEGER,
    since_height INTEGER,
    confirmed_height INTEGER,
    confirmed_hash TEXT,
    queued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cairn_anchor_tx (
    txid TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    raw_tx BLOB NOT NULL,
    fee_sat INTEGER NOT NULL,
    change_vout INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
";

/// One transaction built for an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxVersion {
    /// The signed transaction.
    pub tx: Transaction,
    /// Its fee.
    pub fee: Amount,
    /// Index of its change output (the chain output the next anchor spends).
    pub change_vout: u32,
}

impl TxVersion {
    /// The transaction id.
    pub fn txid(&self) -> Txid {
        self.tx.compute_txid()
    }

    /// The change output the next anchor must spend.
    pub fn change(&self) -> OutPoint {
        OutPoint::new(self.txid(), self.change_vout)
    }
}

/// A stored anchor record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Epoch number.
    pub epoch: u64,
    /// OP_RETURN payload.
    pub payload: Vec<u8>,
    /// State.
    pub state: Stored,
    /// The current transaction (absent while queued).
    pub current: Option<TxVersion>,
    /// Block of the confirmation (with `Stored::Confirmed`).
    pub confirmed_hash: Option<BlockHash>,
    /// Unix time the epoch was queued.
    pub queued_at: u64,
}

/// Creates the tables if needed.
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// A meta value.
pub fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT value FROM cairn_anchor_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

/// Sets a meta value.
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO cairn_anchor_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Queues an epoch.
pub fn insert_queued(
    conn: &Connection,
    epoch: u64,
    payload: &[u8],
    now: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO cairn_anchor (epoch, payload, state, queued_at) VALUES (?1, ?2, 'queued', ?3)",
        params![epoch as i64, payload, now as i64],
    )?;
    Ok(())
}

fn state_name(s: Stored) -> &'static str {
    match s {
        Stored::Queued => "queued",
        Stored::Signed => "signed",
        Stored::Unconfirmed { .. } => "unconfirmed",
        Stored::Confirmed { .. } => "confirmed",
    }
}

/// Writes a record's mutable columns.
pub fn save(conn: &Connection, row: &Row) -> Result<(), StoreError> {
    let (since, conf_height) = match row.state {
        Stored::Unconfirmed { since } => (Some(since), None),
        Stored::Confirmed { height } => (None, Some(height)),
        _ => (None, None),
    };
    let cur = row.current.as_ref();
    conn.execute(
        "UPDATE cairn_anchor SET state = ?2, txid = ?3, raw_tx = ?4, fee_sat = ?5, change_vout = ?6,
             since_height = ?7, confirmed_height = ?8, confirmed_hash = ?9
         WHERE epoch = ?1",
        params![
            row.epoch as i64,
            state_name(row.state),
            cur.map(|v| v.txid().to_string()),
            cur.map(|v| serialize(&v.tx)),
            cur.map(|v| v.fee.to_sat() as i64),
            cur.map(|v| v.change_vout),
            since,
            conf_height,
            row.confirmed_hash.map(|h| h.to_string()),
        ],
    )?;
    Ok(())
}

/// Remembers a version the node accepted, so that a confirmation of any
/// version (an original that wins over its replacement) is recognised.
pub fn add_version(conn: &Connection, epoch: u64, v: &TxVersion) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO cairn_anchor_tx (txid, epoch, raw_tx, fee_sat, change_vout, seq)
         VALUES (?1, ?2, ?3, ?4, ?5,
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM cairn_anchor_tx WHERE epoch = ?2))",
        params![
            v.txid().to_string(),
            epoch as i64,
            serialize(&v.tx),
            v.fee.to_sat() as i64,
            v.change_vout
        ],
    )?;
    Ok(())
}

/// Every accepted version of an epoch's anchor, oldest first.
pub fn versions(conn: &Connection, epoch: u64) -> Result<Vec<TxVersion>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT raw_tx, fee_sat, change_vout FROM cairn_anchor_tx WHERE epoch = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([epoch as i64], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, u32>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (raw, fee, vout) = row?;
        out.push(TxVersion {
            tx: deserialize(&raw).map_err(|_| StoreError::Corrupt {
                epoch,
                what: "raw_tx",
            })?,
            fee: Amount::from_sat(fee as u64),
            change_vout: vout,
        });
    }
    Ok(out)
}

/// Every accepted version of every epoch's anchor, oldest first per epoch.
pub fn all_versions(
    conn: &Connection,
) -> Result<std::collections::HashMap<u64, Vec<TxVersion>>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT epoch, raw_tx, fee_sat, change_vout FROM cairn_anchor_tx ORDER BY epoch, seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, u32>(3)?,
        ))
    })?;
    let mut out: std::collections::HashMap<u64, Vec<TxVersion>> = Default::default();
    for row in rows {
        let (epoch, raw, fee, vout) = row?;
        let epoch = epoch as u64;
        out.entry(epoch).or_default().push(TxVersion {
            tx: deserialize(&raw).map_err(|_| StoreError::Corrupt {
                epoch,
                what: "raw_tx",
            })?,
            fee: Amount::from_sat(fee as u64),
            change_vout: vout,
        });
    }
    Ok(out)
}

type RawRow = (
    i64,
    Vec<u8>,
    String,
    Option<Vec<u8>>,
    Option<i64>,
    Option<u32>,
    Option<u32>,
    Option<u32>,
    Option<String>,
    i64,
);

/// All records, by epoch.
pub fn load_all(conn: &Connection) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT epoch, payload, state, raw_tx, fee_sat, change_vout, since_height,
                confirmed_height, confirmed_hash, queued_at
         FROM cairn_anchor ORDER BY epoch",
    )?;
    let raw: Vec<RawRow> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    raw.into_iter().map(decode).collect()
}

fn decode(r: RawRow) -> Result<Row, StoreError> {
    let (epoch, payload, state, raw_tx, fee, vout, since, conf_h, conf_hash, queued_at) = r;
    let epoch = epoch as u64;
    let corrupt = |what| StoreError::Corrupt { epoch, what };
    let current = match (raw_tx, fee, vout) {
        (Some(raw), Some(fee), Some(vout)) => Some(TxVersion {
            tx: deserialize(&raw).map_err(|_| corrupt("raw_tx"))?,
            fee: Amount::from_sat(fee as u64),
            change_vout: vout,
        }),
        _ => None,
    };
    let state = match state.as_str() {
        "queued" => Stored::Queued,
        "signed" => Stored::Signed,
        "unconfirmed" => Stored::Unconfirmed {
            since: since.ok_or_else(|| corrupt("since_height"))?,
        },
        "confirmed" => Stored::Confirmed {
            height: conf_h.ok_or_else(|| corrupt("confirmed_height"))?,
        },
        _ => return Err(corrupt("state")),
    };
    if state != Stored::Queued && current.is_none() {
        return Err(corrupt("transaction"));
    }
    let confirmed_hash = conf_hash
        .map(|h| h.parse().map_err(|_| corrupt("confirmed_hash")))
        .transpose()?;
    Ok(Row {
        epoch,
        payload,
        state,
        current,
        confirmed_hash,
        queued_at: queued_at as u64,
    })
}

#[cfg(test)]
mod tests {
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{ScriptBuf, TxIn, TxOut};

    use super::*;

    fn tx(n: u64) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn::default()],
            output: vec![TxOut {
                value: Amount::from_sat(n),
                script_pubkey: ScriptBuf::new(),
            }],
        }
    }

    #[test]
    fn records_round_trip() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        insert_queued(&conn, 1, b"one", 100).unwrap();
        insert_queued(&conn, 2, b"two", 101).unwrap();
        assert!(insert_queued(&conn, 2, b"again", 102).is_err());
        let mut rows = load_all(&conn).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, Stored::Queued);
        assert_eq!(rows[1].payload, b"two");

        let v = TxVersion {
            tx: tx(5),
            fee: Amount::from_sat(160),
            change_vout: 1,
        };
        rows[0].current = Some(v.clone());
        rows[0].state = Stored::Confirmed { height: 7 };
        rows[0].confirmed_hash = Some("00".repeat(32).parse().unwrap());
        save(&conn, &rows[0]).unwrap();
        add_version(&conn, 1, &v).unwrap();
        add_version(&conn, 1, &v).unwrap();
        let v2 = TxVersion {
            tx: tx(6),
            ..v.clone()
        };
        add_version(&conn, 1, &v2).unwrap();
        assert_eq!(load_all(&conn).unwrap()[0], rows[0]);
        assert_eq!(versions(&conn, 1).unwrap(), vec![v.clone(), v2.clone()]);
        assert_eq!(all_versions(&conn).unwrap().remove(&1), Some(vec![v, v2]));

        set_meta(&conn, "k", "a").unwrap();
        set_meta(&conn, "k", "b").unwrap();
        assert_eq!(meta(&conn, "k").unwrap().as_deref(), Some("b"));
        assert_eq!(meta(&conn, "missing").unwrap(), None);
    }
}
