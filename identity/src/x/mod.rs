//! X (Twitter) proof posts: challenges, fetching posts through X's public
//! key-less endpoints, and the check that a post proves "account `x_uid` holds
//! key `npub`".
//!
//! Flow: the node [issues](Challenge::issue) a [`Challenge`] for the user's
//! key; the user posts [`Challenge::proof_text`] on X and submits a
//! [`ProofClaim`] (user id, handle, post id); a [`ProofChecker`] over an
//! [`XClient`] (in production [`PublicXClient`]) fetches the post and returns
//! a [`VerifiedPost`], the facts a witness attestation signs, or a
//! [`ProofError`] saying what to fix. The rules are listed in [`check`].
//!
//! Network access lives only in [`PublicXClient`]; everything else is plain
//! logic, and tests substitute a local fake X server or another [`XClient`].

pub mod challenge;
pub mod check;
pub mod client;
#[cfg(feature = "fake-x")]
pub mod fake;
pub mod text;
pub mod token;

pub use challenge::{Challenge, DEFAULT_CHALLENGE_TTL};
pub use check::{
    CheckPolicy, ClaimField, PostAuthor, ProofChecker, ProofClaim, ProofError, VerifiedPost,
    DEFAULT_CLOCK_SKEW,
};
pub use client::{
    Endpoint, FetchError, OEmbedLookup, OEmbedPost, PublicXClient, RetryPolicy, SyndicationLookup,
    SyndicationTweet, XClient, XClientConfig,
};
pub use token::syndication_token;
