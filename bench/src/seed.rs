//! `seed`: fill the relay's store, over the protocol, with a large and varied
//! set of events, and write the author / `p` sets that `query` draws from.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use nostr::{EventBuilder, EventId, Keys, Kind, PublicKey, Tag, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::events::{derive_keys, sign, sign_all};
use crate::filewatch::WatchArgs;
use crate::ingest::publish_measured;
use crate::stats::Report;
use crate::ws::PipelineOptions;

/// Key-derivation domain of the authors.
const AUTHOR_DOMAIN: u64 = 0xa07;
/// Key-derivation domain of the `p`-tagged recipients.
const RECIPIENT_DOMAIN: u64 = 0x9e1;
/// Kinds written by `seed` (all stored: regular, or addressable with unique `d`).
pub const SEED_KINDS: [u16; 4] = [1, 7, 6, 30023];
/// Seconds in the time span the events are spread over.
const YEAR_SECS: u64 = 365 * 24 * 3600;

/// Options of `cairn-bench seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Events to store.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Distinct authors.
    #[arg(long, default_value_t = 1_000)]
    pub authors: usize,
    /// Distinct pubkeys that events `p`-tag.
    #[arg(long, default_value_t = 1_000)]
    pub recipients: usize,
    /// Seed of every random choice (keys, kinds, tags, timestamps).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parallel publishing connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Events in flight per connection.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Where to write the manifest that `query` reads.
    #[arg(long, default_value = "bench-seed.json")]
    pub manifest: PathBuf,
    /// Give up on a connection after this many seconds without a message.
    #[arg(long, default_value_t = 60)]
    pub stall_secs: u64,
    /// Process id of the relay: report the CPU time it used during the run.
    #[arg(long)]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// What a seeded store contains, for `query` to pick targets from.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Author pubkeys (hex).
    pub authors: Vec<String>,
    /// `p`-tagged pubkeys (hex).
    pub recipients: Vec<String>,
    /// Kinds present in the store.
    pub kinds: Vec<u16>,
    /// Events the seed run published.
    pub events: u64,
    /// `--seed` of the run: with it the authors' keys can be derived again
    /// (see [`Manifest::author_keys`]). `None` in a manifest without it.
    pub seed: Option<u64>,
}

impl Manifest {
    /// Read a manifest written by `seed`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("reading {} (run `cairn-bench seed` first)", path.display())
        })?;
        let v: Value = serde_json::from_str(&text).context("parsing the seed manifest")?;
        let strings = |key: &str| -> Result<Vec<String>> {
            v[key]
                .as_array()
                .with_context(|| format!("manifest field {key} missing"))?
                .iter()
                .map(|s| s.as_str().map(str::to_owned).context("hex string expected"))
                .collect()
        };
        let kinds = v["kinds"]
            .as_array()
            .context("manifest field kinds missing")?
            .iter()
            .map(|k| {
                k.as_u64()
                    .and_then(|k| u16::try_from(k).ok())
                    .context("kind expected")
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = Self {
            authors: strings("authors")?,
            recipients: strings("recipients")?,
            kinds,
            events: v["events"].as_u64().unwrap_or(0),
            seed: v["seed"].as_u64(),
        };
        anyhow::ensure!(
            !manifest.authors.is_empty()
                && !manifest.recipients.is_empty()
                && !manifest.kinds.is_empty(),
            "the seed manifest has an empty author, recipient or kind set"
        );
        Ok(manifest)
    }

    /// The authors' keys, derived again from the manifest's seed, so that
    /// new events can be signed as the seeded authors (`mixed`). Fails when
    /// the manifest has no seed or the derived keys are not its authors.
    pub fn author_keys(&self) -> Result<Vec<Keys>> {
        let seed = self
            .seed
            .context("the seed manifest has no seed (written by an old cairn-bench?)")?;
        let keys = derive_keys(seed, AUTHOR_DOMAIN, self.authors.len())?;
        let same = keys
            .iter()
            .zip(&self.authors)
            .all(|(k, hex)| k.public_key().to_hex() == *hex);
        anyhow::ensure!(
            same,
            "the manifest's authors are not derived from its seed {seed}"
        );
        Ok(keys)
    }

    /// The `p`-tagged recipients as public keys.
    pub fn recipient_keys(&self) -> Result<Vec<PublicKey>> {
        self.recipients
            .iter()
            .map(|hex| PublicKey::from_hex(hex).context("recipient in the seed manifest"))
            .collect()
    }

    fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "events": self.events,
            "kinds": self.kinds,
            "authors": self.authors,
            "recipients": self.recipients,
        })
    }
}

/// Build event number `index` of the seeded data set: a kind from
/// [`SEED_KINDS`] (mostly text notes), a random author, a `created_at` within
/// the year before `now`, and `p` tags to the recipient set.
pub fn seed_event(
    seed: u64,
    index: usize,
    now: u64,
    authors: &[Keys],
    recipients: &[PublicKey],
) -> Result<nostr::Event> {
    build_event(seed, index, None, now, authors, recipients)
}

/// Like [`seed_event`] (same mix of kinds, authors and tags), but created at
/// `created_at`: a new event arriving in a seeded store (`mixed`). A
/// different `seed` than the store's keeps ids, contents and `d` tags new.
pub fn fresh_event(
    seed: u64,
    index: usize,
    created_at: u64,
    authors: &[Keys],
    recipients: &[PublicKey],
) -> Result<nostr::Event> {
    build_event(
        seed,
        index,
        Some(created_at),
        created_at,
        authors,
        recipients,
    )
}

fn build_event(
    seed: u64,
    index: usize,
    created_at: Option<u64>,
    now: u64,
    authors: &[Keys],
    recipients: &[PublicKey],
) -> Result<nostr::Event> {
    // One RNG per index keeps events independent of the signing thread layout.
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let author = &authors[rng.gen_range(0..authors.len())];
    let recipient = recipients[rng.gen_range(0..recipients.len())];
    // Drawn even when fixed, so the rest of the event is the same either way.
    let spread = now - rng.gen_range(0..YEAR_SECS);
    let created_at = Timestamp::from(created_at.unwrap_or(spread));
    let mut random_id = [0u8; 32];
    rng.fill_bytes(&mut random_id);
    let target = EventId::from_byte_array(random_id);
    let roll = rng.gen_range(0..100u32);
    let builder = if roll < 60 {
        // Text note; half of them mention someone.
        let mut b = EventBuilder::text_note(format!(
            "seed {seed} note {index}: the quick brown fox jumps over the lazy dog"
        ));
        if rng.gen_bool(0.5) {
            b = b.tag(Tag::public_key(recipient));
        }
        if rng.gen_bool(0.2) {
            b = b.tag(Tag::hashtag(format!("topic{}", rng.gen_range(0..50u32))));
        }
        b
    } else if roll < 85 {
        EventBuilder::new(Kind::Reaction, "+")
            .tag(Tag::event(target))
            .tag(Tag::public_key(recipient))
    } else if roll < 95 {
        EventBuilder::new(Kind::Repost, "")
            .tag(Tag::event(target))
            .tag(Tag::public_key(recipient))
    } else {
        // Addressable, with a unique `d` so that nothing is replaced.
        EventBuilder::new(
            Kind::LongFormTextNote,
            format!("seed {seed} article {index}"),
        )
        .tag(Tag::identifier(format!("article-{seed}-{index}")))
        .tag(Tag::hashtag("longform"))
    };
    sign(builder.custom_created_at(created_at), author)
}

/// Sign the data set, publish it, write the manifest, report.
pub async fn run(url: &str, args: &SeedArgs) -> Result<Report> {
    let authors = derive_keys(args.seed, AUTHOR_DOMAIN, args.authors.max(1))?;
    let recipients: Vec<PublicKey> =
        derive_keys(args.seed, RECIPIENT_DOMAIN, args.recipients.max(1))?
            .iter()
            .map(Keys::public_key)
            .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    eprintln!("signing {} events…", args.events);
    let (events, sign_time) = sign_all(args.events, |i| {
        seed_event(args.seed, i, now, &authors, &recipients)
    })?;
    eprintln!("signed in {:.1} s; publishing…", sign_time.as_secs_f64());

    let manifest = Manifest {
        authors: authors.iter().map(|k| k.public_key().to_hex()).collect(),
        recipients: recipients.iter().map(PublicKey::to_hex).collect(),
        kinds: SEED_KINDS.to_vec(),
        events: args.events as u64,
        seed: Some(args.seed),
    };
    std::fs::write(&args.manifest, manifest.to_json().to_string())
        .with_context(|| format!("writing {}", args.manifest.display()))?;

    let mut report = Report::new("seed");
    report.add("url", url);
    report.add("seed", args.seed);
    report.add("manifest", args.manifest.display().to_string());
    report.add("sign_seconds", sign_time.as_secs_f64());
    let options = PipelineOptions {
        urls: vec![url.to_owned()],
        connections: args.connections,
        window: args.window,
        stall_timeout: Duration::from_secs(args.stall_secs),
        progress: true,
    };
    publish_measured(
        &options,
        events,
        args.pid.as_slice(),
        &args.watch,
        &mut report,
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use nostr::JsonUtil;

    use super::*;

    #[test]
    fn seed_events_are_deterministic_valid_and_varied() {
        let authors = derive_keys(7, AUTHOR_DOMAIN, 10).expect("keys");
        let recipients: Vec<PublicKey> = derive_keys(7, RECIPIENT_DOMAIN, 10)
            .expect("keys")
            .iter()
            .map(Keys::public_key)
            .collect();
        let now = 1_800_000_000;
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..200 {
            let a = seed_event(7, i, now, &authors, &recipients).expect("event");
            let b = seed_event(7, i, now, &authors, &recipients).expect("event");
            // Same content, kind, tags and time (signatures use fresh aux randomness).
            assert_eq!(a.id, b.id);
            a.verify().expect("valid");
            assert!(a.created_at.as_secs() <= now && a.created_at.as_secs() > now - YEAR_SECS);
            assert!(authors.iter().any(|k| k.public_key() == a.pubkey));
            kinds.insert(a.kind.as_u16());
            assert!(SEED_KINDS.contains(&a.kind.as_u16()), "{}", a.as_json());
        }
        assert_eq!(
            kinds.len(),
            SEED_KINDS.len(),
            "every kind appears in 200 events"
        );
    }

    #[test]
    fn manifest_round_trips() {
        let dir = std::env::temp_dir().join(format!("cairn-bench-manifest-{}", std::process::id()));
        let m = Manifest {
            authors: vec!["aa".into()],
            recipients: vec!["bb".into(), "cc".into()],
            kinds: vec![1, 7],
            events: 3,
            seed: Some(1),
        };
        std::fs::write(&dir, m.to_json().to_string()).expect("write");
        let back = Manifest::load(&dir).expect("load");
        std::fs::remove_file(&dir).ok();
        assert_eq!(back, m);
    }

    #[test]
    fn author_keys_are_derived_again_from_the_manifest_seed() {
        let keys = derive_keys(5, AUTHOR_DOMAIN, 4).expect("keys");
        let mut m = Manifest {
            authors: keys.iter().map(|k| k.public_key().to_hex()).collect(),
            recipients: vec![Keys::generate().public_key().to_hex()],
            kinds: SEED_KINDS.to_vec(),
            events: 0,
            seed: Some(5),
        };
        let again = m.author_keys().expect("derived");
        assert_eq!(
            again.iter().map(Keys::public_key).collect::<Vec<_>>(),
            keys.iter().map(Keys::public_key).collect::<Vec<_>>()
        );
        assert_eq!(m.recipient_keys().expect("keys").len(), 1);
        m.seed = Some(6);
        assert!(m.author_keys().is_err(), "another seed, other authors");
        m.seed = None;
        assert!(m.author_keys().is_err(), "no seed");
    }

    #[test]
    fn fresh_events_are_seed_events_at_the_given_time() {
        let authors = derive_keys(7, AUTHOR_DOMAIN, 10).expect("keys");
        let recipients: Vec<PublicKey> = derive_keys(7, RECIPIENT_DOMAIN, 10)
            .expect("keys")
            .iter()
            .map(Keys::public_key)
            .collect();
        let now = 1_800_000_000;
        for i in 0..50 {
            let seeded = seed_event(9, i, now, &authors, &recipients).expect("event");
            let fresh = fresh_event(9, i, now + 5, &authors, &recipients).expect("event");
            fresh.verify().expect("valid");
            assert_eq!(fresh.created_at.as_secs(), now + 5);
            assert_eq!(
                (fresh.pubkey, fresh.kind, &fresh.content, &fresh.tags),
                (seeded.pubkey, seeded.kind, &seeded.content, &seeded.tags)
            );
            assert_ne!(fresh.id, seeded.id);
        }
    }
}
