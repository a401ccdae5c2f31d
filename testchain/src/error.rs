//! Errors of the in-process node, each mapped to the Bitcoin Core RPC error code
//! and message that a client would see from `bitcoind`.

use bitcoin::Txid;

/// Bitcoin Core's RPC error codes (`src/rpc/protocol.h`) that testchain produces.
pub mod codes {
    /// Standard JSON-RPC: the method does not exist.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Standard JSON-RPC: the request body is not valid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Standard JSON-RPC: the request object is malformed.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Unexpected type was passed as parameter.
    pub const TYPE_ERROR: i32 = -3;
    /// Invalid address or key; also "not found" for blocks and transactions.
    pub const INVALID_ADDRESS_OR_KEY: i32 = -5;
    /// Invalid, missing or duplicate parameter.
    pub const INVALID_PARAMETER: i32 = -8;
    /// Error parsing or validating structure in raw format.
    pub const DESERIALIZATION_ERROR: i32 = -22;
    /// General error during transaction or block submission (also missing inputs).
    pub const VERIFY_ERROR: i32 = -25;
    /// Transaction or block was rejected by network rules.
    pub const VERIFY_REJECTED: i32 = -26;
    /// Transaction already in chain.
    pub const VERIFY_ALREADY_IN_CHAIN: i32 = -27;
    /// Standard JSON-RPC: internal error / generic misc error.
    pub const MISC_ERROR: i32 = -1;
}

/// Why the mempool refused a transaction, in Bitcoin Core's `TxValidationResult` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// An input is missing or already spent (`TX_MISSING_INPUTS`).
    MissingInputs,
    /// Breaks a consensus rule (`TX_CONSENSUS`), including script failures.
    Consensus,
    /// Breaks a standardness or fee policy (`TX_NOT_STANDARD`, `TX_MEMPOOL_POLICY`, ...).
    Policy,
    /// Conflicts with the chain or mempool in a way a replacement cannot fix.
    Conflict,
    /// Spends a coinbase output before it matured (`TX_PREMATURE_SPEND`).
    PrematureSpend,
}

/// A mempool rejection: Bitcoin Core's reject reason plus its optional debug details.
///
/// `Display` renders it the way `TxValidationState::ToString()` does
/// (`reason, details`), which is the message of `sendrawtransaction` errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.core_string())]
pub struct TxReject {
    /// Classification, which decides the RPC error code.
    pub kind: RejectKind,
    /// Short reject reason, e.g. `bad-txns-inputs-missingorspent`.
    pub reason: String,
    /// Longer debug message, e.g. `tried to spend coinbase at depth 50`.
    pub details: Option<String>,
}

impl TxReject {
    pub(crate) fn new(kind: RejectKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            details: None,
        }
    }

    pub(crate) fn with_details(
        kind: RejectKind,
        reason: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            reason: reason.into(),
            details: Some(details.into()),
        }
    }

    fn core_string(&self) -> String {
        match &self.details {
            Some(d) => format!("{}, {}", self.reason, d),
            None => self.reason.clone(),
        }
    }

    /// The reason `testmempoolaccept` reports: Core reports missing inputs as
    /// `missing-inputs` there, unlike `sendrawtransaction`.
    pub fn testmempoolaccept_reason(&self) -> &str {
        if self.kind == RejectKind::MissingInputs {
            "missing-inputs"
        } else {
            &self.reason
        }
    }
}

/// Everything the node can refuse, each with the code and message Bitcoin Core uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The mempool refused a transaction.
    #[error(transparent)]
    Rejected(#[from] TxReject),
    /// `sendrawtransaction` fee above `maxfeerate`.
    #[error("Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")]
    MaxFeeExceeded,
    /// The transaction's outputs are already confirmed (Core 28+ wording).
    #[error("Transaction outputs already in utxo set")]
    AlreadyInUtxoSet,
    /// Unknown block hash.
    #[error("Block not found")]
    BlockNotFound,
    /// Unknown block hash passed to `getrawtransaction`.
    #[error("Block hash not found")]
    BlockHashNotFound,
    /// `generateblock` output that is neither an address nor a supported descriptor.
    #[error("Error: Invalid address or descriptor")]
    InvalidAddressOrDescriptor,
    /// `sendrawtransaction` burning more than `maxburnamount` in unspendable outputs.
    #[error("Unspendable output exceeds maximum configured by user (maxburnamount)")]
    MaxBurnExceeded,
    /// `getblockhash` beyond the tip.
    #[error("Block height out of range")]
    HeightOutOfRange,
    /// Unknown transaction (with `-txindex`).
    #[error(
        "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
    )]
    TxNotFound,
    /// Transaction not found in the block given to `getrawtransaction`.
    #[error("No such transaction found in the provided block. Use gettransaction for wallet transactions.")]
    TxNotInBlock,
    /// `getmempoolentry` for a transaction outside the mempool.
    #[error("Transaction not in mempool")]
    NotInMempool,
    /// `generateblock` was given a txid that is not in the mempool.
    #[error("Transaction {0} not in mempool.")]
    GenerateTxNotInMempool(Txid),
    /// `gettxoutproof` for transactions that are not (all) in one block.
    #[error("Not all transactions found in specified or retrieved block")]
    TxsNotInBlock,
    /// `gettxoutproof` for a transaction that is not confirmed.
    #[error("Transaction not yet in block")]
    TxNotYetInBlock,
    /// `verifytxoutproof` for a block outside the active chain.
    #[error("Block not found in chain")]
    BlockNotInChain,
    /// A block assembled by `generateblock` failed validation.
    #[error("TestBlockValidity failed: {0}")]
    BlockInvalid(String),
    /// `getblockfilter` with a filter type other than `basic`.
    #[error("Unknown filtertype")]
    UnknownFilterType,
    /// An address that is not a valid regtest address.
    #[error("Error: Invalid address")]
    InvalidAddress,
    /// A parameter has a bad value.
    #[error("{0}")]
    InvalidParameter(String),
    /// A parameter has the wrong JSON type.
    #[error("{0}")]
    Type(String),
    /// Hex or consensus decoding failed.
    #[error("{0}")]
    Deserialization(String),
    /// A descriptor that does not parse (`scantxoutset`).
    #[error("{0}")]
    InvalidDescriptor(String),
    /// The RPC method does not exist.
    #[error("Method not found")]
    MethodNotFound,
    /// Anything else (`RPC_MISC_ERROR`).
    #[error("{0}")]
    Misc(String),
}

impl Error {
    /// Bitcoin Core's RPC error code for this error.
    pub fn code(&self) -> i32 {
        use codes::*;
        match self {
            Error::Rejected(r) if r.kind == RejectKind::MissingInputs => VERIFY_ERROR,
            Error::Rejected(_) => VERIFY_REJECTED,
            Error::MaxFeeExceeded | Error::MaxBurnExceeded | Error::BlockInvalid(_) => VERIFY_ERROR,
            Error::AlreadyInUtxoSet => VERIFY_ALREADY_IN_CHAIN,
            Error::BlockNotFound
            | Error::BlockHashNotFound
            | Error::InvalidAddressOrDescriptor
            | Error::TxNotFound
            | Error::TxNotInBlock
            | Error::NotInMempool
            | Error::GenerateTxNotInMempool(_)
            | Error::TxsNotInBlock
            | Error::TxNotYetInBlock
            | Error::BlockNotInChain
            | Error::UnknownFilterType
            | Error::InvalidDescriptor(_)
            | Error::InvalidAddress => INVALID_ADDRESS_OR_KEY,
            Error::HeightOutOfRange | Error::InvalidParameter(_) => INVALID_PARAMETER,
            Error::Type(_) => TYPE_ERROR,
            Error::Deserialization(_) => DESERIALIZATION_ERROR,
            Error::MethodNotFound => METHOD_NOT_FOUND,
            Error::Misc(_) => MISC_ERROR,
        }
    }
}

/// A JSON-RPC error object as a client sees it: `{"code": .., "message": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RPC error {code}: {message}")]
pub struct RpcError {
    /// Bitcoin Core error code.
    pub code: i32,
    /// Error message.
    pub message: String,
}

impl From<&Error> for RpcError {
    fn from(e: &Error) -> Self {
        RpcError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}
