//! Bitcoin proof-of-work rules as a Cairn verifier applies them
//! (`docs/identity-protocol.md` §11.6), written out rather than borrowed so
//! that they match Bitcoin Core bit for bit.
//!
//! - `bits` decode as Core's `arith_uint256::SetCompact`: a negative or
//!   overflowing value, or zero, is no target at all ([`decode_compact`]).
//!   (`bitcoin::Target::from_compact` wraps on overflow instead.)
//! - Each network has Core's `powLimit` ([`NetworkRules::pow_limit`]).
//! - A retarget on mainnet and signet is bounded as Core's
//!   `PermittedDifficultyTransition` bounds it, rounding both bounds through
//!   the compact encoding ([`permitted_transition`]).
//!
//! Targets are 256-bit unsigned integers held as 32 **big-endian** bytes, so
//! byte-wise comparison is numeric comparison.

use bitcoin::{constants::genesis_block, hashes::Hash as _, params::Params, BlockHash, Network};

/// A 256-bit target, big-endian.
pub type Target256 = [u8; 32];

/// Blocks between retargets on mainnet and signet.
pub const RETARGET_INTERVAL: u32 = 2016;

/// How a network's `bits` may change from one header to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retarget {
    /// `bits` never change (regtest).
    Never,
    /// `bits` change only at heights that are multiples of [`RETARGET_INTERVAL`],
    /// within a factor of four (mainnet, signet).
    Bounded,
    /// Only the limit is checked: min-difficulty blocks (testnet3, testnet4)
    /// depend on timestamps, which a headers file is not checked for.
    LimitOnly,
}

/// The proof-of-work parameters of one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkRules {
    /// Bitcoin Core's `powLimit`: no target may exceed it.
    pub pow_limit: Target256,
    /// How `bits` may change.
    pub retarget: Retarget,
    /// The genesis block's hash: where a headers file without checkpoint starts.
    pub genesis: BlockHash,
}

const fn limit(lead_zero_bytes: usize, head: &[u8], fill: u8) -> Target256 {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = if i < lead_zero_bytes {
            0
        } else if i - lead_zero_bytes < head.len() {
            head[i - lead_zero_bytes]
        } else {
            fill
        };
        i += 1;
    }
    t
}

/// `00000000ffff…ff`: mainnet, testnet3 and testnet4.
pub const MAINNET_POW_LIMIT: Target256 = limit(4, &[], 0xff);
/// `00000377ae00…00`: signet (the default signet and every custom one).
pub const SIGNET_POW_LIMIT: Target256 = limit(2, &[0x03, 0x77, 0xae], 0x00);
/// `7fffff…ff`: regtest.
pub const REGTEST_POW_LIMIT: Target256 = limit(0, &[0x7f], 0xff);

impl NetworkRules {
    /// The rules for `network`.
    pub fn for_network(network: Network) -> Self {
        let (pow_limit, retarget) = match network {
            Network::Bitcoin => (MAINNET_POW_LIMIT, Retarget::Bounded),
            Network::Testnet | Network::Testnet4 => (MAINNET_POW_LIMIT, Retarget::LimitOnly),
            Network::Signet => (SIGNET_POW_LIMIT, Retarget::Bounded),
            Network::Regtest => (REGTEST_POW_LIMIT, Retarget::Never),
        };
        Self {
            pow_limit,
            retarget,
            genesis: genesis_block(Params::new(network)).block_hash(),
        }
    }
}

/// Decodes compact `bits` as Core's `SetCompact` and `CheckProofOfWork` read
/// them: `None` when the value is negative (sign bit `0x00800000` with a
/// non-zero mantissa), overflows 256 bits, or is zero.
pub fn decode_compact(bits: u32) -> Option<Target256> {
    let size = (bits >> 24) as usize;
    let mut word = bits & 0x007f_ffff;
    if size <= 3 {
        word >>= 8 * (3 - size);
    }
    let negative = word != 0 && bits & 0x0080_0000 != 0;
    let overflow =
        word != 0 && (size > 34 || (word > 0xff && size > 33) || (word > 0xffff && size > 32));
    if negative || overflow || word == 0 {
        return None;
    }
    let mut t = [0u8; 32];
    let bytes = word.to_be_bytes(); // bytes[0] is always 0 (23-bit mantissa)
    let shift = size.saturating_sub(3); // in bytes
    for (k, b) in bytes[1..].iter().rev().enumerate() {
        // byte k of the mantissa (0 = least significant) lands at 256-bit byte k + shift
        let pos = k + shift;
        if *b != 0 {
            // The overflow rule above guarantees pos < 32 for non-zero bytes.
            t[31 - pos] = *b;
        }
    }
    Some(t)
}

/// Encodes a target as Core's `GetCompact` does (rounding down to 3 bytes of mantissa).
pub fn encode_compact(t: &Target256) -> u32 {
    let Some(first) = t.iter().position(|&b| b != 0) else {
        return 0;
    };
    let mut size = 32 - first;
    let mut word = 0u32;
    for i in 0..3 {
        word <<= 8;
        if let Some(&b) = t.get(first + i) {
            word |= u32::from(b);
        }
    }
    if size < 3 {
        word >>= 8 * (3 - size);
        word <<= 8 * (3 - size);
        // Core: GetLow64() << 8 * (3 - nSize): the value shifted up, same result.
    }
    if word & 0x0080_0000 != 0 {
        word >>= 8;
        size += 1;
    }
    word | ((size as u32) << 24)
}

/// The block hash as a 256-bit number (Core's `UintToArith256`), big-endian.
pub fn hash_as_number(hash: &BlockHash) -> Target256 {
    let mut n = hash.to_byte_array();
    n.reverse();
    n
}

fn times_four(t: &Target256) -> Option<Target256> {
    if t[0] & 0xc0 != 0 {
        return None;
    }
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = (t[i] << 2) | t.get(i + 1).map_or(0, |b| b >> 6);
    }
    Some(out)
}

fn quarter(t: &Target256) -> Target256 {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = (t[i] >> 2) | if i > 0 { t[i - 1] << 6 } else { 0 };
    }
    out
}

/// Whether `new_bits` may follow `old_bits` at `height` under `rules`,
/// exactly as Core's `PermittedDifficultyTransition` (Core skips the check on
/// networks with min-difficulty blocks; so does [`Retarget::LimitOnly`]).
///
/// At a retarget height the new target must lie within
/// `[compact(old / 4), compact(min(old * 4, pow_limit))]`, each bound rounded
/// down through the compact encoding as Core does; elsewhere `bits` must not change.
pub fn permitted_transition(
    rules: &NetworkRules,
    height: u32,
    old_bits: u32,
    new_bits: u32,
) -> bool {
    match rules.retarget {
        Retarget::LimitOnly => true,
        Retarget::Never => old_bits == new_bits,
        Retarget::Bounded if height % RETARGET_INTERVAL != 0 => old_bits == new_bits,
        Retarget::Bounded => {
            let (Some(old), Some(new)) = (decode_compact(old_bits), decode_compact(new_bits))
            else {
                return false;
            };
            let round = |t: &Target256| decode_compact(encode_compact(t)).unwrap_or([0; 32]);
            let largest = match times_four(&old) {
                Some(t) if t <= rules.pow_limit => t,
                _ => rules.pow_limit,
            };
            let mut smallest = quarter(&old);
            if smallest > rules.pow_limit {
                smallest = rules.pow_limit;
            }
            new <= round(&largest) && new >= round(&smallest)
        }
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::{pow::Target, CompactTarget};

    use super::*;

    fn hex32(s: &str) -> Target256 {
        let mut t = [0u8; 32];
        hex::decode_to_slice(s, &mut t).unwrap();
        t
    }

    #[test]
    fn limits_and_genesis_hashes_are_cores() {
        let cases = [
            (
                Network::Bitcoin,
                "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
            ),
            (
                Network::Testnet,
                "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
            ),
            (
                Network::Testnet4,
                "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
            ),
            (
                Network::Signet,
                "00000377ae000000000000000000000000000000000000000000000000000000",
                "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
            ),
            (
                Network::Regtest,
                "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
            ),
        ];
        for (network, pow_limit, genesis) in cases {
            let r = NetworkRules::for_network(network);
            assert_eq!(r.pow_limit, hex32(pow_limit), "{network}");
            assert_eq!(r.genesis.to_string(), genesis, "{network}");
            // Each genesis block meets its own bits under its network's limit.
            let g = genesis_block(Params::new(network)).header;
            let t = decode_compact(g.bits.to_consensus()).unwrap();
            assert!(
                t <= r.pow_limit && hash_as_number(&g.block_hash()) <= t,
                "{network}"
            );
        }
    }

    #[test]
    fn compact_decoding_follows_set_compact() {
        assert_eq!(
            decode_compact(0x1d00_ffff),
            Some(hex32(
                "00000000ffff0000000000000000000000000000000000000000000000000000"
            ))
        );
        assert_eq!(
            decode_compact(0x207f_ffff).unwrap()[..3],
            [0x7f, 0xff, 0xff]
        );
        assert_eq!(
            decode_compact(0x0312_3456).unwrap()[29..],
            [0x12, 0x34, 0x56]
        );
        assert_eq!(decode_compact(0x0212_3456).unwrap()[30..], [0x12, 0x34]);
        assert_eq!(decode_compact(0x0112_3456).unwrap()[31], 0x12);
        // Zero, negative (sign bit with a mantissa) and overflow are no target.
        for bits in [
            0,
            0x0100_3456,
            0x1d80_ffff,
            0x0480_0001,
            0x2301_0000,
            0x2200_0100,
            0x2101_0000,
            0xff7f_ffff,
        ] {
            assert_eq!(decode_compact(bits), None, "{bits:#x}");
        }
        // Sign bit without mantissa is zero, not negative: still no target.
        assert_eq!(decode_compact(0x0480_0000), None);
        // The largest values that do not overflow.
        assert!(decode_compact(0x2200_00ff).is_some());
        assert!(decode_compact(0x2100_ffff).is_some());
        assert!(decode_compact(0x207f_ffff).is_some());
        // rust-bitcoin wraps the shift where Core overflows: 0x2301_0000 (2^256) becomes the
        // target 0x10000 there, a value a verifier must not compare hashes against.
        assert_eq!(
            Target::from_compact(CompactTarget::from_consensus(0x2301_0000)),
            Target::from_le_bytes({
                let mut b = [0u8; 32];
                b[2] = 1;
                b
            })
        );
    }

    #[test]
    fn compact_round_trips_and_rounds_down() {
        for bits in [
            0x1d00_ffff,
            0x1b04_04cb,
            0x207f_ffff,
            0x1e03_77ae,
            0x0300_8000,
            0x0412_3456,
        ] {
            let t = decode_compact(bits).unwrap();
            assert_eq!(encode_compact(&t), bits, "{bits:#x}");
        }
        // Extra precision is cut off; a top bit that would look like a sign moves a byte.
        let mut t = decode_compact(0x1d00_ffff).unwrap();
        t[10] = 1;
        assert_eq!(encode_compact(&t), 0x1d00_ffff);
        assert_eq!(
            encode_compact(&hex32(
                "0000000080000000000000000000000000000000000000000000000000000000"
            )),
            0x1d00_8000
        );
    }

    #[test]
    fn retargets_are_bounded_like_core() {
        let main = NetworkRules::for_network(Network::Bitcoin);
        let old = 0x1b04_04cb;
        // Off a retarget height nothing may change.
        assert!(permitted_transition(&main, 2017, old, old));
        assert!(!permitted_transition(&main, 2017, old, 0x1b04_04cc));
        // At one, within a factor of four.
        assert!(permitted_transition(&main, 4032, old, 0x1b10_132c)); // exactly x4
        assert!(!permitted_transition(&main, 4032, old, 0x1b10_132d));
        assert!(permitted_transition(&main, 4032, old, 0x1b01_0132)); // old / 4, rounded down
        assert!(!permitted_transition(&main, 4032, old, 0x1b01_0131));
        // Easier than the limit is capped at the limit.
        assert!(permitted_transition(&main, 4032, 0x1d00_ffff, 0x1d00_ffff));
        assert!(!permitted_transition(&main, 4032, 0x1d00_ffff, 0x1d01_0000));
        // Core rounds old/4 down through the compact encoding; the new target
        // may be that rounded value even though it is below old/4 itself.
        let odd = 0x1c7f_fff3; // mantissa not divisible by 4
        let q = quarter(&decode_compact(odd).unwrap());
        let rounded = encode_compact(&q);
        assert!(decode_compact(rounded).unwrap() < q);
        assert!(permitted_transition(&main, 4032, odd, rounded));
        // Regtest never changes; testnets are limit-only.
        let reg = NetworkRules::for_network(Network::Regtest);
        assert!(!permitted_transition(&reg, 2016, 0x207f_ffff, 0x207f_fffe));
        let test = NetworkRules::for_network(Network::Testnet);
        assert!(permitted_transition(&test, 5, 0x1b04_04cb, 0x1d00_ffff));
        // Signet follows the mainnet rule (Core: fPowAllowMinDifficultyBlocks = false).
        let signet = NetworkRules::for_network(Network::Signet);
        assert!(!permitted_transition(&signet, 5, 0x1e03_77ae, 0x1e03_77ad));
    }
}
