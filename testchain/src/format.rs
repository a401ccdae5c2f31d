//! Bitcoin Core's textual conventions: `FormatMoney`, fee-rate strings, script
//! assembly, script types, inferred descriptors and decoded-transaction JSON.

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::script::Instruction;
use bitcoin::{Address, Amount, Network, Script, Transaction};
use serde_json::{json, Value};

/// Core's `FormatMoney`: eight decimals with trailing zeros trimmed down to two.
pub fn format_money(sat: i64) -> String {
    let neg = sat < 0;
    let abs = sat.unsigned_abs();
    let mut s = format!("{}.{:08}", abs / 100_000_000, abs % 100_000_000);
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
        s.pop();
    }
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

/// Core's `CFeeRate::ToString()` for a fee rate in sat/kvB.
pub fn format_feerate(sat_per_kvb: u64) -> String {
    format!(
        "{}.{:08} BTC/kvB",
        sat_per_kvb / 100_000_000,
        sat_per_kvb % 100_000_000
    )
}

/// An amount as the JSON number Core's `ValueFromAmount` produces (BTC).
pub fn btc(amount: Amount) -> Value {
    json!(amount.to_btc())
}

/// Core's `ScriptToAsmStr`: small pushes as numbers, others as hex, opcodes by name.
pub fn script_asm(script: &Script) -> String {
    let mut parts = Vec::new();
    for ins in script.instructions() {
        match ins {
            Ok(Instruction::PushBytes(bytes)) => {
                let b = bytes.as_bytes();
                if b.is_empty() {
                    parts.push("0".to_string());
                } else if b.len() <= 4 {
                    parts.push(script_num(b).to_string());
                } else {
                    parts.push(hex::encode(b));
                }
            }
            Ok(Instruction::Op(op)) => {
                let code = op.to_u8();
                let name = match code {
                    0x4f => "-1".to_string(),
                    0x51..=0x60 => (code - 0x50).to_string(),
                    _ => op.to_string(),
                };
                parts.push(name);
            }
            Err(_) => {
                parts.push("[error]".to_string());
                break;
            }
        }
    }
    parts.join(" ")
}

fn script_num(b: &[u8]) -> i64 {
    let mut v: i64 = 0;
    for (i, byte) in b.iter().enumerate() {
        v |= i64::from(*byte) << (8 * i);
    }
    let last = b[b.len() - 1];
    if last & 0x80 != 0 {
        -(v & !(0x80i64 << (8 * (b.len() - 1))))
    } else {
        v
    }
}

/// Core's `GetTxnOutputType` name for a scriptPubKey.
pub fn script_type(script: &Script) -> &'static str {
    let bytes = script.as_bytes();
    if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2tr() {
        "witness_v1_taproot"
    } else if bytes == [0x51, 0x02, 0x4e, 0x73] {
        "anchor"
    } else if script.is_witness_program() {
        "witness_unknown"
    } else if script.is_op_return()
        && bytes.len() > 1
        && Script::from_bytes(&bytes[1..]).is_push_only()
        || bytes == [0x6a]
    {
        "nulldata"
    } else if script.is_p2pk() {
        "pubkey"
    } else if script.is_multisig() {
        "multisig"
    } else {
        "nonstandard"
    }
}

/// The regtest address of a script, if it has one.
pub fn script_address(script: &Script) -> Option<String> {
    Address::from_script(script, Network::Regtest)
        .ok()
        .map(|a| a.to_string())
}

/// Core's `InferDescriptor` for a script without key information, with checksum.
pub fn script_descriptor(script: &Script) -> String {
    let inner = if script.is_p2tr() {
        format!("rawtr({})", hex::encode(&script.as_bytes()[2..]))
    } else if let Some(addr) = script_address(script) {
        format!("addr({addr})")
    } else {
        format!("raw({})", hex::encode(script.as_bytes()))
    };
    add_checksum(&inner)
}

/// Appends the BIP-380 descriptor checksum (`desc#checksum`).
pub fn add_checksum(desc: &str) -> String {
    match descriptor_checksum(desc) {
        Some(c) => format!("{desc}#{c}"),
        None => desc.to_string(),
    }
}

/// BIP 380's checksum of `desc`; `None` for characters outside its set.
pub fn descriptor_checksum(desc: &str) -> Option<String> {
    const INPUT: &str = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
    const CHECKSUM: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    fn polymod(c: u64, val: u64) -> u64 {
        let c0 = c >> 35;
        let mut c = ((c & 0x7_ffff_ffff) << 5) ^ val;
        for (bit, g) in [
            (1, 0xf5dee51989),
            (2, 0xa9fdca3312),
            (4, 0x1bab10e32d),
            (8, 0x3706b1677a),
            (16, 0x644d626ffd),
        ] {
            if c0 & bit != 0 {
                c ^= g;
            }
        }
        c
    }
    let (mut c, mut cls, mut count) = (1u64, 0u64, 0);
    for ch in desc.chars() {
        let pos = INPUT.find(ch)? as u64;
        c = polymod(c, pos & 31);
        cls = cls * 3 + (pos >> 5);
        count += 1;
        if count == 3 {
            c = polymod(c, cls);
            cls = 0;
            count = 0;
        }
    }
    if count > 0 {
        c = polymod(c, cls);
    }
    for _ in 0..8 {
        c = polymod(c, 0);
    }
    c ^= 1;
    Some(
        (0..8)
            .map(|j| CHECKSUM[((c >> (5 * (7 - j))) & 31) as usize] as char)
            .collect(),
    )
}

/// Core's `ScriptToUniv` with `include_address = true`.
pub fn script_pubkey_json(script: &Script) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("asm".into(), json!(script_asm(script)));
    o.insert("desc".into(), json!(script_descriptor(script)));
    o.insert("hex".into(), json!(hex::encode(script.as_bytes())));
    if let Some(a) = script_address(script) {
        o.insert("address".into(), json!(a));
    }
    o.insert("type".into(), json!(script_type(script)));
    Value::Object(o)
}

/// Core's `TxToUniv`: the decoded transaction object (with `hex`), without block fields.
pub fn tx_json(tx: &Transaction, include_hex: bool) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    o.insert("txid".into(), json!(tx.compute_txid().to_string()));
    o.insert("hash".into(), json!(tx.compute_wtxid().to_string()));
    o.insert("version".into(), json!(tx.version.0));
    o.insert("size".into(), json!(tx.total_size()));
    o.insert("vsize".into(), json!(tx.vsize()));
    o.insert("weight".into(), json!(tx.weight().to_wu()));
    o.insert("locktime".into(), json!(tx.lock_time.to_consensus_u32()));
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let mut v = serde_json::Map::new();
            if tx.is_coinbase() {
                v.insert(
                    "coinbase".into(),
                    json!(hex::encode(i.script_sig.as_bytes())),
                );
            } else {
                v.insert("txid".into(), json!(i.previous_output.txid.to_string()));
                v.insert("vout".into(), json!(i.previous_output.vout));
                v.insert(
                    "scriptSig".into(),
                    json!({
                        "asm": script_asm(&i.script_sig),
                        "hex": hex::encode(i.script_sig.as_bytes()),
                    }),
                );
            }
            if !i.witness.is_empty() {
                let w: Vec<Value> = i.witness.iter().map(|e| json!(hex::encode(e))).collect();
                v.insert("txinwitness".into(), Value::Array(w));
            }
            v.insert("sequence".into(), json!(i.sequence.0));
            Value::Object(v)
        })
        .collect();
    o.insert("vin".into(), Value::Array(vin));
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, out)| {
            json!({
                "value": btc(out.value),
                "n": n,
                "scriptPubKey": script_pubkey_json(&out.script_pubkey),
            })
        })
        .collect();
    o.insert("vout".into(), Value::Array(vout));
    if include_hex {
        o.insert("hex".into(), json!(serialize_hex(tx)));
    }
    o
}

/// Core's `GetDifficulty` for a compact target.
pub fn difficulty(bits: u32) -> f64 {
    let mut shift = (bits >> 24) & 0xff;
    let mut diff = f64::from(0x0000_ffff) / f64::from(bits & 0x00ff_ffff);
    while shift < 29 {
        diff *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        diff /= 256.0;
        shift -= 1;
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_like_core() {
        assert_eq!(format_money(100_000_000), "1.00");
        assert_eq!(format_money(1_000), "0.00001");
        assert_eq!(format_money(5_625), "0.00005625");
        assert_eq!(format_money(300_000_000), "3.00");
        assert_eq!(format_feerate(1_000), "0.00001000 BTC/kvB");
    }

    #[test]
    fn checksum_matches_bip380_vector() {
        // Test vector from BIP-380.
        assert_eq!(add_checksum("raw(deadbeef)"), "raw(deadbeef)#89f8spxm");
    }

    #[test]
    fn regtest_difficulty() {
        assert!((difficulty(0x207fffff) - 4.656542373906925e-10).abs() < 1e-20);
    }

    #[test]
    fn asm_like_core() {
        let s = Script::from_bytes(&[
            0x00, 0x14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
        ]);
        assert_eq!(script_asm(s), "0 0102030405060708090a0b0c0d0e0f1011121314");
        let s = Script::from_bytes(&[0x51, 0x02, 0xe8, 0x03, 0x6a]);
        assert_eq!(script_asm(s), "1 1000 OP_RETURN");
    }
}
