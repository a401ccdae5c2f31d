//! A one-key P2WPKH wallet that the harness uses to pay test addresses from
//! mined coinbases, with real ECDSA signatures.

use bitcoin::secp256k1::{rand, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Witness,
};

/// Flat fee rate the internal wallet pays, in sat/vB.
pub const INTERNAL_FEE_RATE_SAT_PER_VB: u64 = 2;

/// The harness's own key.
#[derive(Debug)]
pub struct InternalWallet {
    secret: SecretKey,
    public: CompressedPublicKey,
}

impl Default for InternalWallet {
    fn default() -> Self {
        Self::new()
    }
}

impl InternalWallet {
    /// A wallet with a fresh random key.
    pub fn new() -> Self {
        let secp = Secp256k1::new();
        let (secret, pk) = secp.generate_keypair(&mut rand::thread_rng());
        Self {
            secret,
            public: CompressedPublicKey(pk),
        }
    }

    /// The wallet's regtest address.
    pub fn address(&self) -> Address {
        Address::p2wpkh(&self.public, Network::Regtest)
    }

    /// The wallet's scriptPubKey.
    pub fn script_pubkey(&self) -> ScriptBuf {
        self.address().script_pubkey()
    }

    /// Builds and signs a payment of `amount` to `to`, spending `coins` (in order,
    /// as many as needed) with change back to the wallet. `None` if the coins do
    /// not cover amount plus fee.
    pub fn pay(
        &self,
        coins: &[(OutPoint, TxOut)],
        to: ScriptBuf,
        amount: Amount,
    ) -> Option<Transaction> {
        let own = self.script_pubkey();
        let mut chosen = Vec::new();
        let mut total = Amount::ZERO;
        for c in coins {
            chosen.push(c.clone());
            total += c.1.value;
            // 11 vB overhead + 68 per input + 31..43 per output, rounded up generously.
            let vsize = 11 + 68 * chosen.len() as u64 + 43 * 2;
            let fee = Amount::from_sat(vsize * INTERNAL_FEE_RATE_SAT_PER_VB);
            if total >= amount + fee {
                let change = total - amount - fee;
                let mut output = vec![TxOut {
                    value: amount,
                    script_pubkey: to,
                }];
                if change >= own.minimal_non_dust() {
                    output.push(TxOut {
                        value: change,
                        script_pubkey: own,
                    });
                }
                let tx = Transaction {
                    version: transaction::Version::TWO,
                    lock_time: absolute::LockTime::ZERO,
                    input: chosen
                        .iter()
                        .map(|(op, _)| TxIn {
                            previous_output: *op,
                            script_sig: ScriptBuf::new(),
                            // Opt in to RBF like Core's wallet does by default.
                            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                            witness: Witness::new(),
                        })
                        .collect(),
                    output,
                };
                let prevouts: Vec<TxOut> = chosen.iter().map(|(_, o)| o.clone()).collect();
                // Every chosen coin pays `own`, a P2WPKH script, so signing cannot fail.
                return self.sign(tx, &prevouts).ok();
            }
        }
        None
    }

    /// Signs every input of `tx`, which spends `prevouts` (P2WPKH outputs of this wallet).
    ///
    /// Fails if a prevout is not a P2WPKH script or an input index is out of range.
    pub fn sign(
        &self,
        mut tx: Transaction,
        prevouts: &[TxOut],
    ) -> Result<Transaction, bitcoin::sighash::P2wpkhError> {
        let secp = Secp256k1::new();
        let mut witnesses = Vec::with_capacity(tx.input.len());
        {
            let mut cache = SighashCache::new(&tx);
            for (i, prev) in prevouts.iter().enumerate() {
                let sighash = cache
                    .p2wpkh_signature_hash(
                        i,
                        &prev.script_pubkey,
                        prev.value,
                        EcdsaSighashType::All,
                    )
                    .expect("p2wpkh input in range");
                let msg = Message::from(sighash);
                let sig =
                    bitcoin::ecdsa::Signature::sighash_all(secp.sign_ecdsa(&msg, &self.secret));
                witnesses.push(Witness::p2wpkh(&sig, &self.public.0));
            }
        }
        for (input, w) in tx.input.iter_mut().zip(witnesses) {
            input.witness = w;
        }
        Ok(tx)
    }
}
