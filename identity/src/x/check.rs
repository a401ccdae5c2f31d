//! The proof-post check: does this X post prove that account `x_uid` holds
//! the challenged key?
//!
//! Rules, in the order they are applied (the first failure is reported):
//!
//! 1. The claim is well formed (non-zero `x_uid` and post id, valid handle) and
//!    the challenge has a well-formed nonce and npub → else [`ProofError::InvalidClaim`].
//! 2. The challenge has not expired at check time → else [`ProofError::ChallengeExpired`].
//! 3. Syndication and oEmbed are asked concurrently. The post must be visible:
//!    a 403 from oEmbed or `user.protected` → [`ProofError::Protected`];
//!    a 404, an empty answer or a tombstone from either endpoint, or a post
//!    without an author (suspended account) → [`ProofError::Deleted`].
//!    Syndication is required (it alone names the stable `user.id_str`); an
//!    oEmbed outage is tolerated unless [`CheckPolicy::require_oembed`] is set,
//!    and the result records whether oEmbed confirmed the author.
//! 4. Edits: the answer's `edit_control` lists all versions, oldest first. The
//!    claimed id may be any of them (typically the original). The **latest**
//!    version is fetched and its text is the one checked and attested, so an
//!    edit that removed the nonce or the npub makes the proof fail. The result
//!    says `edited` and keeps both the latest and the original id.
//! 5. Author: syndication `user.id_str` must equal the claimed `x_uid`
//!    → else [`ProofError::WrongAuthor`]; `user.screen_name` must equal the
//!    claimed handle, ignoring ASCII case → else [`ProofError::HandleMismatch`];
//!    when oEmbed answered, its `author_url` handle must equal `screen_name`
//!    → else [`ProofError::EndpointsDisagree`].
//! 6. Age: the post (for edited posts, the original) must not be older than
//!    the challenge: the earliest of `created_at` and the snowflake timestamps
//!    of the original and latest ids must be ≥ `issued_at − clock_skew`
//!    → else [`ProofError::TooOld`].
//! 7. Text: the latest text with HTML entities decoded and t.co links replaced
//!    by their `expanded_url` must contain the npub → else
//!    [`ProofError::MissingKey`], and the nonce → else [`ProofError::MissingNonce`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nostr::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    challenge::Challenge,
    client::{
        Endpoint, FetchError, OEmbedLookup, SyndicationLookup, SyndicationTweet, SyndicationUser,
        XClient,
    },
    text::{
        decode_entities, expand_links, handle_from_author_url, is_valid_handle, parse_iso8601_utc,
        parse_numeric_id, snowflake_unix_millis,
    },
};

/// Default tolerance between the node's clock and X's.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(120);

/// X allows five edits, so a chain has at most six versions; a few more
/// lookups than that would mean X keeps changing its answer.
const MAX_EDIT_LOOKUPS: usize = 8;

/// What a user claims: "post `post_id` by `@handle` (user id `x_uid`) proves my key".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofClaim {
    /// The X numeric user id being bound.
    pub x_uid: u64,
    /// The handle, without `@` (any case).
    pub handle: String,
    /// The id of the proof post (any version of an edited post).
    pub post_id: u64,
}

/// The author of a post, as syndication names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostAuthor {
    /// The post id asked about.
    #[serde(with = "decimal")]
    pub post_id: u64,
    /// The author's numeric user id (`user.id_str`).
    #[serde(with = "decimal")]
    pub x_uid: u64,
    /// The author's current handle, without `@`.
    pub handle: String,
}

/// Tunables of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPolicy {
    /// Tolerance between the node's clock and X's timestamps.
    pub clock_skew: Duration,
    /// Fail when oEmbed cannot be reached, instead of relying on syndication alone.
    pub require_oembed: bool,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        Self {
            clock_skew: DEFAULT_CLOCK_SKEW,
            require_oembed: false,
        }
    }
}

/// What the node saw when a proof post checked out: the content of a witness attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedPost {
    /// The author's numeric user id, from syndication.
    pub x_uid: u64,
    /// The author's handle as X spells it now (compare case-insensitively).
    pub handle: String,
    /// Id of the version whose text was checked (the latest one).
    pub post_id: u64,
    /// Id of the original version (equal to `post_id` unless edited).
    pub original_post_id: u64,
    /// The key the post vouches for (the challenge's npub, found in the text).
    pub subject: PublicKey,
    /// The challenge nonce found in the text.
    pub nonce: String,
    /// The checked text: entities decoded, t.co links expanded.
    pub text: String,
    /// Creation time of the checked version, unix seconds.
    pub created_at: u64,
    /// When the node fetched it, unix seconds.
    pub fetched_at: u64,
    /// Whether the post has more than one version.
    pub edited: bool,
    /// Whether oEmbed answered and agreed on the author.
    pub oembed_confirmed: bool,
    /// SHA-256 of `text` in UTF-8.
    #[serde(with = "hex_32")]
    pub text_sha256: [u8; 32],
}

/// Which part of a claim or challenge is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimField {
    /// [`ProofClaim::x_uid`] (zero).
    XUid,
    /// [`ProofClaim::handle`].
    Handle,
    /// [`ProofClaim::post_id`] (zero).
    PostId,
    /// [`Challenge::nonce`].
    Nonce,
    /// [`Challenge::npub`].
    Npub,
}

/// Why a proof post does not prove the claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The claim or challenge is malformed; nothing was fetched.
    #[error("invalid {field:?} in proof claim or challenge")]
    InvalidClaim {
        /// The malformed field.
        field: ClaimField,
    },
    /// The challenge is past its expiry; a new one must be requested.
    #[error("challenge expired at {expires_at} (now {now})")]
    ChallengeExpired {
        /// Expiry, unix seconds.
        expires_at: u64,
        /// Check time, unix seconds.
        now: u64,
    },
    /// The post does not exist (any more) or X shows a tombstone instead.
    #[error("post {post_id} is deleted or unavailable ({endpoint}{})", suffix(.reason))]
    Deleted {
        /// The post id asked for.
        post_id: u64,
        /// Which endpoint said so.
        endpoint: Endpoint,
        /// X's explanation, if any.
        reason: Option<String>,
    },
    /// The account is protected: its posts are not public, so nobody can re-check them.
    #[error("post {post_id} is from a protected account")]
    Protected {
        /// The post id.
        post_id: u64,
        /// Which endpoint said so.
        endpoint: Endpoint,
    },
    /// The post was written by another account than the claimed `x_uid`.
    #[error("post {post_id} is by user {actual_x_uid} (@{actual_handle}), not {claimed_x_uid}")]
    WrongAuthor {
        /// The post id.
        post_id: u64,
        /// The claimed user id.
        claimed_x_uid: u64,
        /// The real author's user id.
        actual_x_uid: u64,
        /// The real author's handle.
        actual_handle: String,
    },
    /// The author id matches but the account's handle is not the claimed one.
    #[error("post {post_id}: account is @{actual}, not @{claimed}")]
    HandleMismatch {
        /// The post id.
        post_id: u64,
        /// The claimed handle.
        claimed: String,
        /// The handle X reports.
        actual: String,
    },
    /// oEmbed and syndication name different authors.
    #[error(
        "post {post_id}: syndication says @{syndication_handle}, oEmbed says @{oembed_handle}"
    )]
    EndpointsDisagree {
        /// The post id.
        post_id: u64,
        /// Handle according to syndication.
        syndication_handle: String,
        /// Handle according to oEmbed.
        oembed_handle: String,
    },
    /// The post is older than the challenge, so it cannot answer it.
    #[error("post {post_id} was created at {created_at}, before the challenge ({issued_at})")]
    TooOld {
        /// The post id.
        post_id: u64,
        /// Earliest creation time seen for the post, unix seconds.
        created_at: u64,
        /// When the challenge was issued, unix seconds.
        issued_at: u64,
    },
    /// The (latest) post text does not contain the npub.
    #[error("post {post_id} does not contain {npub}")]
    MissingKey {
        /// The checked post version.
        post_id: u64,
        /// The npub that should appear.
        npub: String,
        /// Whether the post was edited (an edit may have removed it).
        edited: bool,
    },
    /// The (latest) post text does not contain the challenge nonce.
    #[error("post {post_id} does not contain the challenge nonce")]
    MissingNonce {
        /// The checked post version.
        post_id: u64,
        /// Whether the post was edited (an edit may have removed it).
        edited: bool,
    },
    /// X could not be reached (after retries); try again later.
    #[error("{endpoint} unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// The endpoint that failed.
        endpoint: Endpoint,
        /// Requests made.
        attempts: u32,
        /// Why the last one failed.
        reason: String,
    },
    /// X answered something this check does not understand.
    #[error("unexpected answer from {endpoint}: {detail}")]
    UnexpectedResponse {
        /// The endpoint.
        endpoint: Endpoint,
        /// What was unexpected.
        detail: String,
    },
}

impl From<FetchError> for ProofError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Unavailable {
                endpoint,
                attempts,
                reason,
            } => ProofError::Unavailable {
                endpoint,
                attempts,
                reason,
            },
            FetchError::UnexpectedStatus { endpoint, status } => ProofError::UnexpectedResponse {
                endpoint,
                detail: format!("HTTP {status}"),
            },
            FetchError::Malformed { endpoint, detail } | FetchError::Setup { endpoint, detail } => {
                ProofError::UnexpectedResponse { endpoint, detail }
            }
        }
    }
}

impl ProofError {
    /// Whether asking again later may succeed (X unreachable or rate limiting).
    pub fn is_transient(&self) -> bool {
        matches!(self, ProofError::Unavailable { .. })
    }
}

/// Checks proof posts through an [`XClient`].
#[derive(Debug, Clone)]
pub struct ProofChecker<C> {
    client: C,
    policy: CheckPolicy,
}

impl<C: XClient> ProofChecker<C> {
    /// A checker using `client` and `policy`.
    pub fn new(client: C, policy: CheckPolicy) -> Self {
        Self { client, policy }
    }

    /// The client in use.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// Who wrote post `post_id`, from its syndication answer (the only
    /// public place that names the stable numeric `user.id_str`): for edited
    /// posts, the latest version's author. Lets a user bind without knowing
    /// their numeric id; the full [`Self::check_at`] still decides the proof.
    pub async fn author_of(&self, post_id: u64) -> Result<PostAuthor, ProofError> {
        if post_id == 0 {
            return Err(ProofError::InvalidClaim {
                field: ClaimField::PostId,
            });
        }
        let first = found_or_deleted(self.client.syndication(post_id).await?, post_id)?;
        let (latest, latest_id, _) = self.resolve_latest(first, post_id).await?;
        let user = author(&latest, latest_id)?;
        if user.protected {
            return Err(ProofError::Protected {
                post_id: latest_id,
                endpoint: Endpoint::Syndication,
            });
        }
        Ok(PostAuthor {
            post_id,
            x_uid: numeric(&user.id_str, "user.id_str")?,
            handle: user.screen_name.clone(),
        })
    }

    /// Checks `claim` against `challenge` now (system clock).
    pub async fn check(
        &self,
        challenge: &Challenge,
        claim: &ProofClaim,
    ) -> Result<VerifiedPost, ProofError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_at(challenge, claim, now).await
    }

    /// Checks `claim` against `challenge` as of `now` (unix seconds).
    pub async fn check_at(
        &self,
        challenge: &Challenge,
        claim: &ProofClaim,
        now: u64,
    ) -> Result<VerifiedPost, ProofError> {
        let subject = validate(challenge, claim)?;
        if challenge.is_expired(now) {
            return Err(ProofError::ChallengeExpired {
                expires_at: challenge.expires_at,
                now,
            });
        }
        let post_id = claim.post_id;

        let (syndication, oembed) = tokio::join!(
            self.client.syndication(post_id),
            self.client.oembed(&claim.handle, post_id)
        );
        let syndication = syndication?;
        let oembed = match oembed {
            Ok(found) => Some(found),
            Err(FetchError::Unavailable { .. }) if !self.policy.require_oembed => None,
            Err(e) => return Err(e.into()),
        };

        // A protected account hides its posts from both endpoints; report the
        // more specific cause before "deleted".
        if matches!(oembed, Some(OEmbedLookup::Forbidden)) {
            return Err(ProofError::Protected {
                post_id,
                endpoint: Endpoint::OEmbed,
            });
        }
        let first = found_or_deleted(syndication, post_id)?;
        let oembed_handle = match &oembed {
            Some(OEmbedLookup::Found(post)) => {
                Some(handle_from_author_url(&post.author_url).ok_or_else(|| {
                    ProofError::UnexpectedResponse {
                        endpoint: Endpoint::OEmbed,
                        detail: "author_url is not an X profile URL".into(),
                    }
                })?)
            }
            Some(OEmbedLookup::NotFound) => {
                return Err(ProofError::Deleted {
                    post_id,
                    endpoint: Endpoint::OEmbed,
                    reason: None,
                })
            }
            Some(OEmbedLookup::Forbidden) | None => None,
        };

        let (latest, latest_id, chain) = self.resolve_latest(first, post_id).await?;
        let edited = chain.len() > 1 || latest.is_edited;
        let original_post_id = chain[0];

        let user = author(&latest, latest_id)?;
        if user.protected {
            return Err(ProofError::Protected {
                post_id: latest_id,
                endpoint: Endpoint::Syndication,
            });
        }
        let author_id = numeric(&user.id_str, "user.id_str")?;
        if author_id != claim.x_uid {
            return Err(ProofError::WrongAuthor {
                post_id: latest_id,
                claimed_x_uid: claim.x_uid,
                actual_x_uid: author_id,
                actual_handle: user.screen_name.clone(),
            });
        }
        if !user.screen_name.eq_ignore_ascii_case(&claim.handle) {
            return Err(ProofError::HandleMismatch {
                post_id: latest_id,
                claimed: claim.handle.clone(),
                actual: user.screen_name.clone(),
            });
        }
        if let Some(oembed_handle) = &oembed_handle {
            if !oembed_handle.eq_ignore_ascii_case(&user.screen_name) {
                return Err(ProofError::EndpointsDisagree {
                    post_id: latest_id,
                    syndication_handle: user.screen_name.clone(),
                    oembed_handle: oembed_handle.clone(),
                });
            }
        }

        let created_at = parse_iso8601_utc(&latest.created_at).ok_or_else(|| {
            ProofError::UnexpectedResponse {
                endpoint: Endpoint::Syndication,
                detail: "created_at is not an ISO 8601 UTC timestamp".into(),
            }
        })?;
        let earliest = [original_post_id, latest_id]
            .into_iter()
            .map(|id| snowflake_unix_millis(id) / 1000)
            .chain([created_at])
            .min()
            .unwrap_or(created_at);
        if earliest.saturating_add(self.policy.clock_skew.as_secs()) < challenge.issued_at {
            return Err(ProofError::TooOld {
                post_id: original_post_id,
                created_at: earliest,
                issued_at: challenge.issued_at,
            });
        }

        let text = expand_links(
            &decode_entities(&latest.text),
            latest
                .entities
                .urls
                .iter()
                .filter_map(|u| Some((u.url.as_str(), u.expanded_url.as_deref()?))),
        );
        if !text.contains(&challenge.npub) {
            return Err(ProofError::MissingKey {
                post_id: latest_id,
                npub: challenge.npub.clone(),
                edited,
            });
        }
        if !text.contains(&challenge.nonce) {
            return Err(ProofError::MissingNonce {
                post_id: latest_id,
                edited,
            });
        }

        let text_sha256 = Sha256::digest(text.as_bytes()).into();
        Ok(VerifiedPost {
            x_uid: author_id,
            handle: user.screen_name.clone(),
            post_id: latest_id,
            original_post_id,
            subject,
            nonce: challenge.nonce.clone(),
            text,
            created_at,
            fetched_at: now,
            edited,
            oembed_confirmed: oembed_handle.is_some(),
            text_sha256,
        })
    }

    /// Follows the edit chain from `first` to the latest version. Returns that
    /// version, its id and the chain (oldest first), which contains `claimed_id`.
    async fn resolve_latest(
        &self,
        first: SyndicationTweet,
        claimed_id: u64,
    ) -> Result<(SyndicationTweet, u64, Vec<u64>), ProofError> {
        let mut current = first;
        for _ in 0..MAX_EDIT_LOOKUPS {
            let current_id = numeric(&current.id_str, "id_str")?;
            let chain = current
                .edit_chain()
                .iter()
                .map(|id| numeric(id, "edit_tweet_ids"))
                .collect::<Result<Vec<u64>, _>>()?;
            if !chain.contains(&claimed_id) || !chain.contains(&current_id) {
                return Err(malformed("answer is not a version of the requested post"));
            }
            let latest_id = *chain.last().expect("edit chain is never empty");
            if current_id == latest_id {
                return Ok((current, latest_id, chain));
            }
            let lookup = self.client.syndication(latest_id).await?;
            current = found_or_deleted(lookup, latest_id)?;
        }
        Err(malformed("edit history does not settle"))
    }
}

fn malformed(detail: &str) -> ProofError {
    ProofError::UnexpectedResponse {
        endpoint: Endpoint::Syndication,
        detail: detail.to_owned(),
    }
}

/// Parses a numeric id from a syndication answer.
fn numeric(value: &str, field: &str) -> Result<u64, ProofError> {
    parse_numeric_id(value).ok_or_else(|| malformed(&format!("{field} is not a numeric id")))
}

/// `": reason"` or nothing, for error messages.
fn suffix(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

fn found_or_deleted(
    lookup: SyndicationLookup,
    post_id: u64,
) -> Result<SyndicationTweet, ProofError> {
    match lookup {
        SyndicationLookup::Found(tweet) => Ok(*tweet),
        SyndicationLookup::NotFound => Err(ProofError::Deleted {
            post_id,
            endpoint: Endpoint::Syndication,
            reason: None,
        }),
        SyndicationLookup::Tombstone { text } => Err(ProofError::Deleted {
            post_id,
            endpoint: Endpoint::Syndication,
            reason: Some(text.unwrap_or_else(|| "tombstone".to_owned())),
        }),
    }
}

fn author(tweet: &SyndicationTweet, post_id: u64) -> Result<&SyndicationUser, ProofError> {
    tweet.user.as_ref().ok_or_else(|| ProofError::Deleted {
        post_id,
        endpoint: Endpoint::Syndication,
        reason: Some("post has no author (account suspended?)".to_owned()),
    })
}

/// Checks the claim and challenge; returns the challenged key.
fn validate(challenge: &Challenge, claim: &ProofClaim) -> Result<PublicKey, ProofError> {
    let invalid = |field| Err(ProofError::InvalidClaim { field });
    if claim.x_uid == 0 {
        return invalid(ClaimField::XUid);
    }
    if !is_valid_handle(&claim.handle) {
        return invalid(ClaimField::Handle);
    }
    if claim.post_id == 0 {
        return invalid(ClaimField::PostId);
    }
    if !challenge.nonce_is_well_formed() {
        return invalid(ClaimField::Nonce);
    }
    match challenge.public_key() {
        Some(key) => Ok(key),
        None => invalid(ClaimField::Npub),
    }
}

/// Serde for a u64 as a decimal string (X ids exceed JSON's safe integers).
mod decimal {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Serde for a 32-byte digest as lowercase hex.
mod hex_32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}
