//! Decoding of the §6.1 record bytes, the inverse of [`Identity::record_bytes`].

use nostr::{EventId, PublicKey};

use crate::binding::{validate_handle, Identity, PendingRecovery, Status};

/// Why record bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end early or run past the record.
    #[error("record has the wrong length")]
    Length,
    /// The record version is unknown.
    #[error("unsupported record version {0}")]
    Version(u8),
    /// The status byte is unknown.
    #[error("unknown record status {0}")]
    Status(u8),
    /// The handle is not a valid X handle.
    #[error("record handle is invalid")]
    Handle,
    /// The key field is inconsistent with the status (zero while bound, set while revoked).
    #[error("record key does not fit its status")]
    Key,
    /// `x_uid` is zero.
    #[error("record x_uid is zero")]
    ZeroUid,
}

/// Parses record bytes. Only canonical records are accepted: re-encoding the
/// result gives the input back. `last_epoch` is not part of the record and is
/// returned as 0.
pub fn parse_record(bytes: &[u8]) -> Result<Identity, RecordError> {
    let fixed = 1 + 1 + 8 + 8 + 32 + 32 + 1;
    if bytes.len() < fixed {
        return Err(RecordError::Length);
    }
    if bytes[0] != 1 {
        return Err(RecordError::Version(bytes[0]));
    }
    let status_byte = bytes[1];
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let arr32 = |i: usize| -> [u8; 32] { bytes[i..i + 32].try_into().expect("32 bytes") };
    let x_uid = u64_at(2);
    if x_uid == 0 {
        return Err(RecordError::ZeroUid);
    }
    let seq = u64_at(10);
    let head = EventId::from_byte_array(arr32(18));
    let key_bytes = arr32(50);
    let handle_len = bytes[82] as usize;
    let pending_len = if status_byte == 2 { 32 + 32 + 4 } else { 0 };
    if bytes.len() != fixed + handle_len + pending_len {
        return Err(RecordError::Length);
    }
    let handle = std::str::from_utf8(&bytes[83..83 + handle_len])
        .map_err(|_| RecordError::Handle)?
        .to_owned();
    validate_handle(&handle).map_err(|_| RecordError::Handle)?;
    let key = (key_bytes != [0; 32]).then(|| PublicKey::from_byte_array(key_bytes));
    let status = match status_byte {
        1 => Status::Bound,
        2 => {
            let p = 83 + handle_len;
            Status::RecoveryPending(PendingRecovery {
                recover_id: EventId::from_byte_array(arr32(p)),
                new_key: PublicKey::from_byte_array(arr32(p + 32)),
                effective_height: u32::from_be_bytes(
                    bytes[p + 64..p + 68].try_into().expect("4 bytes"),
                ),
            })
        }
        3 => Status::Revoked,
        other => return Err(RecordError::Status(other)),
    };
    if key.is_some() == (status == Status::Revoked) {
        return Err(RecordError::Key);
    }
    Ok(Identity {
        x_uid,
        handle,
        key,
        status,
        seq,
        head,
        last_epoch: 0,
    })
}

#[cfg(test)]
mod tests {
    use nostr::Keys;

    use super::*;

    fn identity(status: Status, key: Option<PublicKey>) -> Identity {
        Identity {
            x_uid: 12345,
            handle: "alice_01".into(),
            key,
            status,
            seq: 9,
            head: EventId::from_byte_array([3; 32]),
            last_epoch: 0,
        }
    }

    #[test]
    fn every_status_round_trips() {
        let key = Some(Keys::generate().public_key());
        let pending = Status::RecoveryPending(PendingRecovery {
            recover_id: EventId::from_byte_array([4; 32]),
            new_key: Keys::generate().public_key(),
            effective_height: 800_144,
        });
        for id in [
            identity(Status::Bound, key),
            identity(pending, key),
            identity(Status::Revoked, None),
        ] {
            assert_eq!(parse_record(&id.record_bytes()).unwrap(), id);
        }
    }

    #[test]
    fn malformed_records_are_refused() {
        let key = Some(Keys::generate().public_key());
        let good = identity(Status::Bound, key).record_bytes();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            parse_record(&b)
        };
        assert_eq!(with(0, 2), Err(RecordError::Version(2)));
        assert_eq!(with(1, 4), Err(RecordError::Status(4)));
        // Status "pending" without the pending fields is too short.
        assert_eq!(with(1, 2), Err(RecordError::Length));
        // Revoked with a key, bound without one.
        assert_eq!(with(1, 3), Err(RecordError::Key));
        let keyless = identity(Status::Bound, None).record_bytes();
        assert_eq!(parse_record(&keyless), Err(RecordError::Key));
        assert_eq!(with(83, b'A'), Err(RecordError::Handle));
        assert_eq!(
            parse_record(&good[..good.len() - 1]),
            Err(RecordError::Length)
        );
        let mut zero = good.clone();
        zero[2..10].fill(0);
        assert_eq!(parse_record(&zero), Err(RecordError::ZeroUid));
        let mut longer = good;
        longer.push(b'x');
        assert_eq!(parse_record(&longer), Err(RecordError::Length));
    }
}
