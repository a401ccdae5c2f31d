//! The Lightning node's entropy, derived from the node's BIP39 seed.
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

use bitcoin::hashes::{hmac, sha512, Hash, HashEngine};
use bitcoin::Network;
use cairn_identity::anchor::{Seed, SeedError};

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
}
