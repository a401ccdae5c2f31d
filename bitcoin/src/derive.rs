//! Everything derived from the node's one seed, in one table.
//!
//! | use | derivation | here |
//! | --- | --- | --- |
//! | payments on-chain wallet | BIP86 `m/86'/<coin>'/0'` | [`PAYMENTS_ACCOUNT`], [`Seed::payments_descriptors`] |
//! | identity anchor chain | BIP86 `m/86'/<coin>'/1'` | [`ANCHOR_ACCOUNT`], [`Seed::anchor_descriptors`] |
//! | Lightning node entropy | HMAC-SHA512 keyed with [`LIGHTNING_ENTROPY_TAG`] over the BIP32 master key | [`lightning_seed_bytes`] |
//!
//! `<coin>` is 0 on mainnet and 1 on every test network ([`crate::seed::coin_type`]).
//! A new use takes the next free BIP86 account, or a new HMAC tag for
//! non-BIP32 material, and a row here. The two on-chain wallets are separate
//! bdk wallets on separate accounts, so the payments wallet can never spend
//! the anchor chain's output.
//!
//! ## The Lightning entropy
//!
//! ldk-node accepts a mnemonic (`set_entropy_bip39_mnemonic`) or 64 seed bytes
//! (`set_entropy_seed_bytes`). Cairn uses the **seed bytes**, derived with
//! domain separation rather than handing ldk-node the mnemonic itself:
//!
//! ```text
//! ln_seed = HMAC-SHA512(key = "cairn/ldk-node/entropy/v1",
//!                       msg = master_chain_code || master_secret_key)
//! ```
//!
//! where the master key is BIP32 `m` of the BIP39 seed (empty passphrase).
//! Why: ldk-node would otherwise derive its own on-chain wallet (BIP84) and
//! channel keys from the very same BIP32 master as Cairn's BIP86 wallets; the
//! HMAC makes the Lightning key tree independent of the on-chain key trees, so
//! no path choice on either side can ever collide, and the Lightning seed
//! reveals nothing about the on-chain keys. The result is still a pure function
//! of the one seed file, so restoring the mnemonic restores the Lightning node.

use crate::seed::{Seed, SeedError};
use bitcoin::hashes::{hmac, sha512, Hash, HashEngine};
use bitcoin::Network;

/// BIP86 account of the payments on-chain wallet.
pub const PAYMENTS_ACCOUNT: u32 = 0;
/// BIP86 account of the identity anchor chain: its own account, so the
/// payments wallet (account 0) can never spend it.
pub const ANCHOR_ACCOUNT: u32 = 1;

impl Seed {
    /// The payments wallet's BIP86 descriptors (external, change). They hold
    /// the private key: never log them.
    pub fn payments_descriptors(&self, network: Network) -> Result<(String, String), SeedError> {
        self.bip86_descriptors(network, PAYMENTS_ACCOUNT)
    }

    /// The anchor chain's BIP86 descriptors (external, change). They hold
    /// the private key: never log them.
    pub fn anchor_descriptors(&self, network: Network) -> Result<(String, String), SeedError> {
        self.bip86_descriptors(network, ANCHOR_ACCOUNT)
    }
}

/// Domain-separation tag of the Lightning entropy derivation.
pub const LIGHTNING_ENTROPY_TAG: &[u8] = b"cairn/ldk-node/entropy/v1";

/// Length of the seed ldk-node takes (`ldk_node::WALLET_KEYS_SEED_LEN`).
pub const LIGHTNING_SEED_LEN: usize = 64;

/// The 64 bytes given to ldk-node's `Builder::set_entropy_seed_bytes`.
///
/// A secret: never log it.
pub fn lightning_seed_bytes(
    seed: &Seed,
    network: Network,
) -> Result<[u8; LIGHTNING_SEED_LEN], SeedError> {
    let master = seed.master_key(network)?;
    let mut engine = hmac::HmacEngine::<sha512::Hash>::new(LIGHTNING_ENTROPY_TAG);
    engine.input(master.chain_code.as_bytes());
    let mut secret = master.private_key.secret_bytes();
    engine.input(&secret);
    secret.fill(0);
    Ok(hmac::Hmac::<sha512::Hash>::from_engine(engine).to_byte_array())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_distinct_across_seeds() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (sa, _) = Seed::load_or_create(a.path()).unwrap();
        let (sa2, _) = Seed::load_or_create(a.path()).unwrap();
        let (sb, _) = Seed::load_or_create(b.path()).unwrap();
        let x = lightning_seed_bytes(&sa, Network::Regtest).unwrap();
        assert_eq!(x, lightning_seed_bytes(&sa2, Network::Regtest).unwrap());
        assert_ne!(x, lightning_seed_bytes(&sb, Network::Regtest).unwrap());
        // Not the master key material itself.
        let m = sa.master_key(Network::Regtest).unwrap();
        assert_ne!(&x[..32], &m.private_key.secret_bytes()[..]);
        assert_ne!(&x[32..], &m.private_key.secret_bytes()[..]);
    }

    #[test]
    fn the_two_wallets_use_different_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, _) = Seed::load_or_create(dir.path()).unwrap();
        let payments = seed.payments_descriptors(Network::Regtest).unwrap();
        let anchor = seed.anchor_descriptors(Network::Regtest).unwrap();
        assert!(payments.0.contains("/86'/1'/0'/0/*"), "account 0");
        assert!(anchor.0.contains("/86'/1'/1'/0/*"), "account 1");
        assert_ne!(payments, anchor);
    }
}
