//! Binding operations, witness attestations and the per-`x_uid` registry.
//!
//! A binding operation is a Nostr event of kind [`kinds::BINDING`] signed by the
//! user's key. Parsing ([`BindingOp::from_event`]) checks everything that can be
//! checked from the event alone: signature, tag syntax, which tags each
//! operation needs, and the new key's signature on a rotation. Whether the
//! operation is *acceptable now* depends on history, which [`Registry`] tracks:
//! the `seq`/`prev` chain, the current key, challenge reuse, one operation per
//! `x_uid` per epoch, and the recovery delay with its veto window.
//!
//! Everything here is pure: time comes in as block heights and epoch numbers.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    str::FromStr,
};

use nostr::{
    secp256k1::{schnorr::Signature, Message},
    Event, EventBuilder, EventId, Keys, Kind, PublicKey, Tag, TagKind, SECP256K1,
};

use crate::{
    hash::Tag as HashTag,
    kinds,
    nip01::{check_event, EventCheckError},
    Hash,
};

/// Default recovery delay: about one day of blocks.
pub const DEFAULT_RECOVERY_DELAY_BLOCKS: u32 = 144;

/// Shortest accepted challenge nonce. Nonces are node-issued random strings.
pub const MIN_CHALLENGE_LEN: usize = 16;

/// Longest accepted challenge nonce.
pub const MAX_CHALLENGE_LEN: usize = 64;

/// Longest X handle (X's own limit).
pub const MAX_HANDLE_LEN: usize = 15;

static ROTATE_TAG: HashTag = HashTag::new("cairn/rotate");
static RECORD_TAG: HashTag = HashTag::new("cairn/record");

/// The five operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// First binding of an `x_uid` (or a fresh one after revocation), backed by a proof post.
    Bind,
    /// Moves the binding to a new key; signed by the current key and the new key.
    Rotate,
    /// Ends the binding; signed by the current key.
    Revoke,
    /// Claims the `x_uid` for a new key with a fresh proof post after losing the
    /// current key; takes effect only after the recovery delay.
    Recover,
    /// Cancels a pending recovery; signed by the current key.
    Veto,
}

impl OpKind {
    /// The `op` tag value.
    pub fn as_str(&self) -> &'static str {
        match self {
            OpKind::Bind => "bind",
            OpKind::Rotate => "rotate",
            OpKind::Revoke => "revoke",
            OpKind::Recover => "recover",
            OpKind::Veto => "veto",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OpKind {
    type Err = BindingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "bind" => OpKind::Bind,
            "rotate" => OpKind::Rotate,
            "revoke" => OpKind::Revoke,
            "recover" => OpKind::Recover,
            "veto" => OpKind::Veto,
            _ => {
                return Err(BindingError::InvalidTag {
                    tag: "op",
                    reason: "unknown operation",
                })
            }
        })
    }
}

/// Why an event is not a well-formed binding operation or attestation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The event's id or signature is wrong, or it breaks a NIP-01 rule Cairn
    /// applies to protocol events (control characters, empty tags, `created_at`).
    #[error("event: {0}")]
    Event(#[from] EventCheckError),
    /// The event has another kind.
    #[error("wrong event kind {0}")]
    WrongKind(u16),
    /// A required tag is missing.
    #[error("missing `{0}` tag")]
    MissingTag(&'static str),
    /// A protocol tag appears more than once.
    #[error("duplicate `{0}` tag")]
    DuplicateTag(&'static str),
    /// A protocol tag appears on an operation that must not carry it.
    #[error("`{tag}` tag is not allowed on `{op}`")]
    UnexpectedTag {
        /// The tag name.
        tag: &'static str,
        /// The operation.
        op: OpKind,
    },
    /// A tag value is malformed.
    #[error("invalid `{tag}` tag: {reason}")]
    InvalidTag {
        /// The tag name.
        tag: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The new key's signature on a rotation does not verify.
    #[error("new key signature does not verify")]
    BadNewKeySignature,
    /// A rotation to the key that already signs it.
    #[error("rotation to the same key")]
    SameKey,
    /// An attestation carries a tag the protocol does not define for it.
    #[error("attestation carries the unknown tag `{0}`")]
    ExtraAttestationTag(String),
    /// An attestation has non-empty content.
    #[error("attestation content must be empty")]
    AttestationContent,
    /// An attestation does not describe this operation.
    #[error("attestation does not match the operation: {0}")]
    AttestationMismatch(&'static str),
}

/// The X account a proof post belongs to, as in a NIP-39 `i` tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XIdentity {
    /// Handle without `@`, lowercase.
    pub handle: String,
    /// Numeric id of the proof post.
    pub post_id: u64,
}

/// Checks an X handle: 1–15 of `[a-z0-9_]`, already lowercase (NIP-39 asks for normalized names).
pub fn validate_handle(handle: &str) -> Result<(), BindingError> {
    let ok = !handle.is_empty()
        && handle.len() <= MAX_HANDLE_LEN
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BindingError::InvalidTag {
            tag: "i",
            reason: "handle must be 1-15 characters of [a-z0-9_]",
        })
    }
}

/// Normalizes a user-typed handle (`@Alice` → `alice`) and validates it.
pub fn normalize_handle(input: &str) -> Result<String, BindingError> {
    let h = input
        .strip_prefix('@')
        .unwrap_or(input)
        .to_ascii_lowercase();
    validate_handle(&h)?;
    Ok(h)
}

/// Parses a canonical decimal `u64`: digits only, no sign, no leading zeros.
pub(crate) fn parse_decimal(tag: &'static str, s: &str) -> Result<u64, BindingError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(BindingError::InvalidTag {
            tag,
            reason: "not a canonical decimal number",
        });
    }
    s.parse().map_err(|_| BindingError::InvalidTag {
        tag,
        reason: "number out of range",
    })
}

fn parse_hex32(tag: &'static str, s: &str) -> Result<[u8; 32], BindingError> {
    let err = BindingError::InvalidTag {
        tag,
        reason: "expected 64 lowercase hex characters",
    };
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(err);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| err)?;
    Ok(out)
}

fn validate_challenge(s: &str) -> Result<(), BindingError> {
    if (MIN_CHALLENGE_LEN..=MAX_CHALLENGE_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        Ok(())
    } else {
        Err(BindingError::InvalidTag {
            tag: "challenge",
            reason: "must be 16-64 ASCII letters or digits",
        })
    }
}

/// The message the new key signs on a rotation:
/// `TH("cairn/rotate", u64_be(x_uid) || u64_be(seq) || prev || old_key || new_key)`.
///
/// It names the exact transition (which identity, which position in its chain,
/// from which key), so the signature cannot be replayed onto another rotation.
pub fn rotation_message(
    x_uid: u64,
    seq: u64,
    prev: &EventId,
    old_key: &PublicKey,
    new_key: &PublicKey,
) -> Hash {
    ROTATE_TAG.hash(&[
        &x_uid.to_be_bytes(),
        &seq.to_be_bytes(),
        prev.as_bytes(),
        old_key.as_bytes(),
        new_key.as_bytes(),
    ])
}

/// Tag names owned by the protocol; each may appear at most once.
const PROTOCOL_TAGS: [&str; 9] = [
    "i",
    "x_uid",
    "op",
    "seq",
    "prev",
    "challenge",
    "new_key",
    "new_key_sig",
    "e",
];

/// Collects the protocol tags of `event`, rejecting duplicates; other tags are ignored.
fn protocol_tags<'a>(
    event: &'a Event,
    names: &[&'static str],
) -> Result<HashMap<&'static str, &'a [String]>, BindingError> {
    let mut found: HashMap<&'static str, &'a [String]> = HashMap::new();
    for tag in event.tags.iter() {
        let t = tag.as_slice();
        let Some(name) = names
            .iter()
            .find(|n| t.first().map(String::as_str) == Some(**n))
        else {
            continue;
        };
        if found.insert(name, t).is_some() {
            return Err(BindingError::DuplicateTag(name));
        }
    }
    Ok(found)
}

fn tag_value<'a>(
    tags: &HashMap<&'static str, &'a [String]>,
    name: &'static str,
) -> Result<Option<&'a str>, BindingError> {
    match tags.get(name) {
        None => Ok(None),
        Some(t) if t.len() == 2 => Ok(Some(t[1].as_str())),
        Some(_) => Err(BindingError::InvalidTag {
            tag: name,
            reason: "expected exactly one value",
        }),
    }
}

fn parse_i_tag(t: &[String]) -> Result<XIdentity, BindingError> {
    if t.len() != 3 {
        return Err(BindingError::InvalidTag {
            tag: "i",
            reason: "expected [\"i\", \"twitter:<handle>\", \"<post id>\"]",
        });
    }
    let handle = t[1]
        .strip_prefix("twitter:")
        .ok_or(BindingError::InvalidTag {
            tag: "i",
            reason: "platform must be twitter",
        })?;
    validate_handle(handle)?;
    let post_id = parse_decimal("i", &t[2])?;
    if post_id == 0 {
        // X post ids are non-zero snowflakes; 0 is what a default value looks like.
        return Err(BindingError::InvalidTag {
            tag: "i",
            reason: "post id must be non-zero",
        });
    }
    Ok(XIdentity {
        handle: handle.to_owned(),
        post_id,
    })
}

/// A parsed, self-consistent binding operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingOp {
    /// The signed event it was parsed from (kept for proof bundles).
    pub event: Event,
    /// Which operation.
    pub op: OpKind,
    /// The X numeric user id the operation is about.
    pub x_uid: u64,
    /// Position in this `x_uid`'s chain of accepted operations, from 0.
    pub seq: u64,
    /// Id of the previous accepted operation; `None` exactly when `seq == 0`.
    pub prev: Option<EventId>,
    /// Proof post (`bind` and `recover` only).
    pub identity: Option<XIdentity>,
    /// Challenge nonce quoted in the proof post (`bind` and `recover` only).
    pub challenge: Option<String>,
    /// The key rotated to (`rotate` only).
    pub new_key: Option<PublicKey>,
    /// The recovery being vetoed (`veto` only).
    pub target: Option<EventId>,
}

impl BindingOp {
    /// Parses and validates `event` (see the module docs for what is checked here).
    pub fn from_event(event: &Event) -> Result<Self, BindingError> {
        if event.kind != Kind::Custom(kinds::BINDING) {
            return Err(BindingError::WrongKind(event.kind.as_u16()));
        }
        check_event(event)?;
        let tags = protocol_tags(event, &PROTOCOL_TAGS)?;

        let op: OpKind = tag_value(&tags, "op")?
            .ok_or(BindingError::MissingTag("op"))?
            .parse()?;
        let x_uid = parse_decimal(
            "x_uid",
            tag_value(&tags, "x_uid")?.ok_or(BindingError::MissingTag("x_uid"))?,
        )?;
        if x_uid == 0 {
            return Err(BindingError::InvalidTag {
                tag: "x_uid",
                reason: "zero is not an X user id",
            });
        }
        let seq = parse_decimal(
            "seq",
            tag_value(&tags, "seq")?.ok_or(BindingError::MissingTag("seq"))?,
        )?;
        let prev = match tag_value(&tags, "prev")?.ok_or(BindingError::MissingTag("prev"))? {
            "" => None,
            hex => Some(EventId::from_byte_array(parse_hex32("prev", hex)?)),
        };
        if prev.is_none() != (seq == 0) {
            return Err(BindingError::InvalidTag {
                tag: "prev",
                reason: "must be empty exactly when seq is 0",
            });
        }
        if seq == 0 && op != OpKind::Bind {
            // Only a `bind` can start a chain, so every other operation has a
            // 32-byte `prev` (a rotation message never sees an empty one).
            return Err(BindingError::InvalidTag {
                tag: "seq",
                reason: "only a bind can have seq 0",
            });
        }

        // The optional protocol tags: each is required by some operations and forbidden on the rest.
        let proof_post = matches!(op, OpKind::Bind | OpKind::Recover);
        let rotate = op == OpKind::Rotate;
        for (name, required) in [
            ("i", proof_post),
            ("challenge", proof_post),
            ("new_key", rotate),
            ("new_key_sig", rotate),
            ("e", op == OpKind::Veto),
        ] {
            match (required, tags.contains_key(name)) {
                (true, false) => return Err(BindingError::MissingTag(name)),
                (false, true) => return Err(BindingError::UnexpectedTag { tag: name, op }),
                _ => {}
            }
        }

        let identity = tags.get("i").map(|t| parse_i_tag(t)).transpose()?;
        let challenge = tag_value(&tags, "challenge")?
            .map(|c| validate_challenge(c).map(|_| c.to_owned()))
            .transpose()?;
        let target = tag_value(&tags, "e")?
            .map(|h| parse_hex32("e", h).map(EventId::from_byte_array))
            .transpose()?;

        let new_key = match op {
            OpKind::Rotate => {
                let new_hex = tag_value(&tags, "new_key")?.expect("required above");
                let new_key = PublicKey::from_byte_array(parse_hex32("new_key", new_hex)?);
                if new_key == event.pubkey {
                    return Err(BindingError::SameKey);
                }
                let sig_hex = tag_value(&tags, "new_key_sig")?.expect("required above");
                let mut sig_bytes = [0u8; 64];
                let bad_sig = BindingError::InvalidTag {
                    tag: "new_key_sig",
                    reason: "expected 128 lowercase hex characters",
                };
                if sig_hex.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(bad_sig);
                }
                hex::decode_to_slice(sig_hex, &mut sig_bytes).map_err(|_| bad_sig)?;
                let sig = Signature::from_slice(&sig_bytes)
                    .map_err(|_| BindingError::BadNewKeySignature)?;
                let xonly = new_key.xonly().map_err(|_| BindingError::InvalidTag {
                    tag: "new_key",
                    reason: "not a valid x-only public key",
                })?;
                let prev = prev.ok_or(BindingError::InvalidTag {
                    tag: "prev",
                    reason: "a rotation always has a previous operation",
                })?;
                let msg = rotation_message(x_uid, seq, &prev, &event.pubkey, &new_key);
                SECP256K1
                    .verify_schnorr(&sig, &Message::from_digest(msg), &xonly)
                    .map_err(|_| BindingError::BadNewKeySignature)?;
                Some(new_key)
            }
            _ => None,
        };

        Ok(Self {
            event: event.clone(),
            op,
            x_uid,
            seq,
            prev,
            identity,
            challenge,
            new_key,
            target,
        })
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.event.id
    }

    /// The key that signed the event.
    pub fn signer(&self) -> PublicKey {
        self.event.pubkey
    }

    /// The log entry for this operation (see [`log_entry`]).
    pub fn log_entry(&self) -> [u8; 33] {
        log_entry(LogEntryKind::Binding, &self.event.id)
    }
}

/// What a log leaf records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LogEntryKind {
    /// An accepted binding operation event.
    Binding = 1,
    /// A witness attestation event.
    Attestation = 2,
}

/// Log leaf data: `kind (u8) || event id (32 bytes)`. The log hashes it with the
/// RFC 6962 leaf prefix; the type byte keeps attestations and operations apart.
pub fn log_entry(kind: LogEntryKind, id: &EventId) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = kind as u8;
    out[1..].copy_from_slice(id.as_bytes());
    out
}

fn tag(name: &str, values: impl IntoIterator<Item = String>) -> Tag {
    Tag::custom(TagKind::custom(name.to_owned()), values)
}

fn common_tags(op: OpKind, x_uid: u64, seq: u64, prev: Option<&EventId>) -> Vec<Tag> {
    vec![
        tag("op", [op.as_str().to_owned()]),
        tag("x_uid", [x_uid.to_string()]),
        tag("seq", [seq.to_string()]),
        tag("prev", [prev.map(EventId::to_hex).unwrap_or_default()]),
    ]
}

fn proof_post_tags(handle: &str, post_id: u64, challenge: &str) -> [Tag; 2] {
    [
        tag("i", [format!("twitter:{handle}"), post_id.to_string()]),
        tag("challenge", [challenge.to_owned()]),
    ]
}

/// Unsigned `bind` (`recover == false`) or `recover` event, to be signed by the key being bound.
pub fn proof_post_op(
    recover: bool,
    x_uid: u64,
    seq: u64,
    prev: Option<&EventId>,
    handle: &str,
    post_id: u64,
    challenge: &str,
) -> EventBuilder {
    let op = if recover {
        OpKind::Recover
    } else {
        OpKind::Bind
    };
    let mut tags = common_tags(op, x_uid, seq, prev);
    tags.extend(proof_post_tags(handle, post_id, challenge));
    EventBuilder::new(Kind::Custom(kinds::BINDING), "").tags(tags)
}

/// Unsigned `rotate` event, to be signed by `current`; `new_keys` signs the rotation message here.
pub fn rotate_op(
    current: &PublicKey,
    new_keys: &Keys,
    x_uid: u64,
    seq: u64,
    prev: &EventId,
) -> EventBuilder {
    let new_key = new_keys.public_key();
    let msg = rotation_message(x_uid, seq, prev, current, &new_key);
    let sig = new_keys.sign_schnorr(&Message::from_digest(msg));
    let mut tags = common_tags(OpKind::Rotate, x_uid, seq, Some(prev));
    tags.push(tag("new_key", [new_key.to_hex()]));
    tags.push(tag("new_key_sig", [hex::encode(sig.as_ref())]));
    EventBuilder::new(Kind::Custom(kinds::BINDING), "").tags(tags)
}

/// Unsigned `revoke` event, to be signed by the current key.
pub fn revoke_op(x_uid: u64, seq: u64, prev: &EventId) -> EventBuilder {
    EventBuilder::new(Kind::Custom(kinds::BINDING), "").tags(common_tags(
        OpKind::Revoke,
        x_uid,
        seq,
        Some(prev),
    ))
}

/// Unsigned `veto` event against the pending recovery `recover_id`, to be signed by the current key.
pub fn veto_op(x_uid: u64, seq: u64, prev: &EventId, recover_id: &EventId) -> EventBuilder {
    let mut tags = common_tags(OpKind::Veto, x_uid, seq, Some(prev));
    tags.push(tag("e", [recover_id.to_hex()]));
    EventBuilder::new(Kind::Custom(kinds::BINDING), "").tags(tags)
}

/// What a witness node saw when it fetched a proof post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessAttestation {
    /// Author id of the post, as X reported it.
    pub x_uid: u64,
    /// Author handle, lowercase.
    pub handle: String,
    /// The post's id.
    pub post_id: u64,
    /// The key (npub) quoted in the post.
    pub subject: PublicKey,
    /// The challenge nonce quoted in the post.
    pub challenge: String,
    /// SHA-256 of the post text as fetched (after HTML entity decoding).
    pub post_text_sha256: Hash,
    /// When X says the post was created (unix seconds).
    pub posted_at: u64,
    /// When the witness fetched it (unix seconds).
    pub fetched_at: u64,
}

impl WitnessAttestation {
    /// Unsigned attestation event (kind [`kinds::WITNESS_ATTESTATION`]), to be signed by the node key.
    pub fn to_event_builder(&self) -> EventBuilder {
        let tags = vec![
            tag(
                "i",
                [format!("twitter:{}", self.handle), self.post_id.to_string()],
            ),
            tag("x_uid", [self.x_uid.to_string()]),
            tag("p", [self.subject.to_hex()]),
            tag("challenge", [self.challenge.clone()]),
            tag("post_sha256", [hex::encode(self.post_text_sha256)]),
            tag("posted_at", [self.posted_at.to_string()]),
            tag("fetched_at", [self.fetched_at.to_string()]),
        ];
        EventBuilder::new(Kind::Custom(kinds::WITNESS_ATTESTATION), "").tags(tags)
    }

    /// Parses an attestation event, checking its signature. Returns the
    /// attestation and the witness key; whether that witness is trusted is the caller's call.
    pub fn from_event(event: &Event) -> Result<(Self, PublicKey), BindingError> {
        if event.kind != Kind::Custom(kinds::WITNESS_ATTESTATION) {
            return Err(BindingError::WrongKind(event.kind.as_u16()));
        }
        check_event(event)?;
        if !event.content.is_empty() {
            return Err(BindingError::AttestationContent);
        }
        let names = [
            "i",
            "x_uid",
            "p",
            "challenge",
            "post_sha256",
            "posted_at",
            "fetched_at",
        ];
        if let Some(extra) = event
            .tags
            .iter()
            .filter_map(|t| t.as_slice().first())
            .find(|n| !names.contains(&n.as_str()))
        {
            // The witness writes exactly these tags; anything else is not an attestation of this version.
            return Err(BindingError::ExtraAttestationTag(extra.clone()));
        }
        let tags = protocol_tags(event, &names)?;
        let req = |n: &'static str| -> Result<&str, BindingError> {
            tag_value(&tags, n)?.ok_or(BindingError::MissingTag(n))
        };
        let id = parse_i_tag(tags.get("i").ok_or(BindingError::MissingTag("i"))?)?;
        let challenge = req("challenge")?;
        validate_challenge(challenge)?;
        let x_uid = parse_decimal("x_uid", req("x_uid")?)?;
        if x_uid == 0 {
            return Err(BindingError::InvalidTag {
                tag: "x_uid",
                reason: "zero is not an X user id",
            });
        }
        let attestation = Self {
            x_uid,
            handle: id.handle,
            post_id: id.post_id,
            subject: {
                let key = PublicKey::from_byte_array(parse_hex32("p", req("p")?)?);
                key.xonly().map_err(|_| BindingError::InvalidTag {
                    tag: "p",
                    reason: "not a valid x-only public key",
                })?;
                key
            },
            challenge: challenge.to_owned(),
            post_text_sha256: parse_hex32("post_sha256", req("post_sha256")?)?,
            posted_at: parse_decimal("posted_at", req("posted_at")?)?,
            fetched_at: parse_decimal("fetched_at", req("fetched_at")?)?,
        };
        Ok((attestation, event.pubkey))
    }

    /// Checks that this attestation backs `op`: a `bind` or `recover` for the
    /// same `x_uid`, handle, post and challenge, signed by the key the post names.
    pub fn matches(&self, op: &BindingOp) -> Result<(), BindingError> {
        use BindingError::AttestationMismatch as M;
        let id = op
            .identity
            .as_ref()
            .ok_or(M("operation has no proof post"))?;
        if op.x_uid != self.x_uid {
            return Err(M("x_uid"));
        }
        if id.handle != self.handle {
            return Err(M("handle"));
        }
        if id.post_id != self.post_id {
            return Err(M("post id"));
        }
        if op.challenge.as_deref() != Some(self.challenge.as_str()) {
            return Err(M("challenge"));
        }
        if op.signer() != self.subject {
            return Err(M("signing key is not the key in the post"));
        }
        Ok(())
    }
}

/// Inputs the registry needs about "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpContext {
    /// The epoch the operation would be logged in.
    pub epoch: u64,
    /// Current best block height.
    pub height: u32,
}

/// Registry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Blocks between an accepted `recover` and its effect.
    pub recovery_delay_blocks: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            recovery_delay_blocks: DEFAULT_RECOVERY_DELAY_BLOCKS,
        }
    }
}

/// A recovery waiting out its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRecovery {
    /// The `recover` event.
    pub recover_id: EventId,
    /// The key that will take over.
    pub new_key: PublicKey,
    /// First block height at which the recovery takes effect.
    pub effective_height: u32,
}

/// Where an `x_uid` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Bound to `Identity::key`.
    Bound,
    /// Bound, with a recovery pending.
    RecoveryPending(PendingRecovery),
    /// Revoked; a new `bind` may follow.
    Revoked,
}

/// The current record of one `x_uid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The X numeric user id.
    pub x_uid: u64,
    /// The handle from the latest proof post.
    pub handle: String,
    /// The bound key; `None` once revoked.
    pub key: Option<PublicKey>,
    /// Binding status.
    pub status: Status,
    /// `seq` of the latest accepted operation.
    pub seq: u64,
    /// Id of the latest accepted operation.
    pub head: EventId,
    /// Epoch of the latest accepted operation.
    pub last_epoch: u64,
}

impl Identity {
    /// Canonical record encoding, whose hash is this `x_uid`'s value in the state tree:
    /// `version (1) || status (1: bound, 2: recovery pending, 3: revoked) || u64_be(x_uid)
    /// || u64_be(seq) || head (32) || key (32, zeros if none) || handle_len (1) || handle
    /// || [recover_id (32) || new_key (32) || u32_be(effective_height) if pending]`.
    pub fn record_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 1 + 8 + 8 + 32 + 32 + 1 + 15 + 68);
        out.push(1);
        out.push(match self.status {
            Status::Bound => 1,
            Status::RecoveryPending(_) => 2,
            Status::Revoked => 3,
        });
        out.extend_from_slice(&self.x_uid.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(self.key.as_ref().map_or(&[0u8; 32], |k| k.as_bytes()));
        out.push(self.handle.len() as u8);
        out.extend_from_slice(self.handle.as_bytes());
        if let Status::RecoveryPending(p) = &self.status {
            out.extend_from_slice(p.recover_id.as_bytes());
            out.extend_from_slice(p.new_key.as_bytes());
            out.extend_from_slice(&p.effective_height.to_be_bytes());
        }
        out
    }

    /// `TH("cairn/record", record_bytes())`.
    pub fn record_hash(&self) -> Hash {
        RECORD_TAG.hash(&[&self.record_bytes()])
    }
}

/// How a handle or `x_uid` looks from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityStatus<'a> {
    /// Currently bound (possibly with a recovery pending).
    Bound(&'a Identity),
    /// Revoked.
    Revoked(&'a Identity),
    /// This identity's handle now belongs to another `x_uid`.
    Moved {
        /// The identity asked about.
        identity: &'a Identity,
        /// The `x_uid` that now holds its handle.
        now: u64,
    },
}

/// Why the registry refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The first operation for an `x_uid` must be a `bind`.
    #[error("x_uid {0} has no binding yet; only `bind` is possible")]
    UnknownIdentity(u64),
    /// `seq` is not the next one.
    #[error("expected seq {expected}, got {got}")]
    WrongSeq {
        /// The next valid seq.
        expected: u64,
        /// The seq in the event.
        got: u64,
    },
    /// `prev` is not the latest accepted operation.
    #[error("prev does not name the latest accepted operation")]
    StalePrev,
    /// An operation for this `x_uid` was already accepted in this epoch.
    #[error("x_uid {x_uid} already has an operation in epoch {epoch}")]
    OnePerEpoch {
        /// The identity.
        x_uid: u64,
        /// The epoch.
        epoch: u64,
    },
    /// The challenge nonce was used before.
    #[error("challenge was already used")]
    ChallengeReused,
    /// The operation is not possible in the identity's current status.
    #[error("`{op}` is not possible while the identity is {status}")]
    WrongStatus {
        /// The operation.
        op: OpKind,
        /// The current status.
        status: &'static str,
    },
    /// The event is not signed by the key the operation requires.
    #[error("`{0}` must be signed by the current key")]
    WrongSigner(OpKind),
    /// A `recover` signed by the current key: that key should rotate instead.
    #[error("recovery to the current key; use rotate")]
    RecoverToCurrentKey,
    /// The veto names another recovery.
    #[error("veto does not name the pending recovery")]
    VetoTargetMismatch,
    /// The recovery delay is over.
    #[error("the veto window closed at height {0}")]
    VetoTooLate(u32),
}

/// What an accepted operation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The identity that changed.
    pub x_uid: u64,
    /// Its new record hash (the state tree value).
    pub record_hash: Hash,
}

/// The registry: current record per `x_uid`, handle index and used challenges.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    config: RegistryConfig,
    identities: HashMap<u64, Identity>,
    handles: HashMap<String, u64>,
    challenges: HashSet<String>,
    pending: BTreeSet<(u32, u64)>,
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The record of `x_uid`.
    pub fn get(&self, x_uid: u64) -> Option<&Identity> {
        self.identities.get(&x_uid)
    }

    /// The identity currently holding `handle` (any case, with or without `@`).
    pub fn resolve_handle(&self, handle: &str) -> Option<&Identity> {
        let h = normalize_handle(handle).ok()?;
        self.handles.get(&h).and_then(|id| self.identities.get(id))
    }

    /// Status of `x_uid`, including "moved" when its handle was since proven by another id.
    pub fn status(&self, x_uid: u64) -> Option<IdentityStatus<'_>> {
        let identity = self.identities.get(&x_uid)?;
        match self.handles.get(&identity.handle) {
            Some(&now) if now != x_uid => return Some(IdentityStatus::Moved { identity, now }),
            _ => {}
        }
        Some(match identity.status {
            Status::Revoked => IdentityStatus::Revoked(identity),
            _ => IdentityStatus::Bound(identity),
        })
    }

    /// Checks `op` against the current state without changing anything.
    pub fn check(&self, op: &BindingOp, ctx: OpContext) -> Result<(), RegistryError> {
        self.transition(op, ctx).map(|_| ())
    }

    /// Applies `op` if it is acceptable now.
    pub fn apply(&mut self, op: &BindingOp, ctx: OpContext) -> Result<Applied, RegistryError> {
        let next = self.transition(op, ctx)?;
        if let Some(c) = &op.challenge {
            self.challenges.insert(c.clone());
        }
        if let Some(old) = self.identities.get(&op.x_uid) {
            if let Status::RecoveryPending(p) = old.status {
                self.pending.remove(&(p.effective_height, op.x_uid));
            }
        }
        if let Status::RecoveryPending(p) = next.status {
            self.pending.insert((p.effective_height, op.x_uid));
        }
        if let Some(id) = &op.identity {
            // A fresh proof post is the latest word on who holds the handle.
            self.handles.insert(id.handle.clone(), op.x_uid);
        }
        let applied = Applied {
            x_uid: op.x_uid,
            record_hash: next.record_hash(),
        };
        self.identities.insert(op.x_uid, next);
        Ok(applied)
    }

    /// Completes every recovery whose delay has passed at `height`.
    pub fn advance(&mut self, height: u32) -> Vec<Applied> {
        let mut done = Vec::new();
        while let Some(&(h, x_uid)) = self.pending.first() {
            if h > height {
                break;
            }
            self.pending.pop_first();
            let Some(identity) = self.identities.get_mut(&x_uid) else {
                continue;
            };
            if let Status::RecoveryPending(p) = identity.status {
                identity.key = Some(p.new_key);
                identity.status = Status::Bound;
                done.push(Applied {
                    x_uid,
                    record_hash: identity.record_hash(),
                });
            }
        }
        done
    }

    /// The record `op` would produce, or why it is refused.
    fn transition(&self, op: &BindingOp, ctx: OpContext) -> Result<Identity, RegistryError> {
        if let Some(c) = &op.challenge {
            if self.challenges.contains(c) {
                return Err(RegistryError::ChallengeReused);
            }
        }
        let Some(current) = self.identities.get(&op.x_uid) else {
            if op.op != OpKind::Bind {
                return Err(RegistryError::UnknownIdentity(op.x_uid));
            }
            if op.seq != 0 {
                return Err(RegistryError::WrongSeq {
                    expected: 0,
                    got: op.seq,
                });
            }
            return Ok(Identity {
                x_uid: op.x_uid,
                handle: op.identity.as_ref().expect("bind has i").handle.clone(),
                key: Some(op.signer()),
                status: Status::Bound,
                seq: 0,
                head: op.id(),
                last_epoch: ctx.epoch,
            });
        };

        let expected = current.seq + 1;
        if op.seq != expected {
            return Err(RegistryError::WrongSeq {
                expected,
                got: op.seq,
            });
        }
        if op.prev != Some(current.head) {
            return Err(RegistryError::StalePrev);
        }
        if current.last_epoch == ctx.epoch {
            return Err(RegistryError::OnePerEpoch {
                x_uid: op.x_uid,
                epoch: ctx.epoch,
            });
        }
        let status_name = match current.status {
            Status::Bound => "bound",
            Status::RecoveryPending(_) => "pending recovery",
            Status::Revoked => "revoked",
        };
        let wrong_status = || RegistryError::WrongStatus {
            op: op.op,
            status: status_name,
        };
        let signed_by_current = current.key == Some(op.signer());

        let mut next = current.clone();
        next.seq = op.seq;
        next.head = op.id();
        next.last_epoch = ctx.epoch;
        match op.op {
            OpKind::Bind => {
                if current.status != Status::Revoked {
                    return Err(wrong_status());
                }
                next.key = Some(op.signer());
                next.status = Status::Bound;
                next.handle = op.identity.as_ref().expect("bind has i").handle.clone();
            }
            OpKind::Rotate => {
                if current.status != Status::Bound {
                    return Err(wrong_status());
                }
                if !signed_by_current {
                    return Err(RegistryError::WrongSigner(op.op));
                }
                next.key = op.new_key;
            }
            OpKind::Revoke => {
                if current.status == Status::Revoked {
                    return Err(wrong_status());
                }
                if !signed_by_current {
                    return Err(RegistryError::WrongSigner(op.op));
                }
                next.key = None;
                next.status = Status::Revoked;
            }
            OpKind::Recover => {
                if current.status != Status::Bound {
                    return Err(wrong_status());
                }
                if signed_by_current {
                    return Err(RegistryError::RecoverToCurrentKey);
                }
                next.handle = op.identity.as_ref().expect("recover has i").handle.clone();
                next.status = Status::RecoveryPending(PendingRecovery {
                    recover_id: op.id(),
                    new_key: op.signer(),
                    effective_height: ctx.height.saturating_add(self.config.recovery_delay_blocks),
                });
            }
            OpKind::Veto => {
                let Status::RecoveryPending(p) = current.status else {
                    return Err(wrong_status());
                };
                if !signed_by_current {
                    return Err(RegistryError::WrongSigner(op.op));
                }
                if op.target != Some(p.recover_id) {
                    return Err(RegistryError::VetoTargetMismatch);
                }
                if ctx.height >= p.effective_height {
                    return Err(RegistryError::VetoTooLate(p.effective_height));
                }
                next.status = Status::Bound;
            }
        }
        Ok(next)
    }
}
