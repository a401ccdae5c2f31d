//! What runs beside the server when payments are on: the wallet, Lightning
//! node and NWC service ([`payments`]), and zap receipts ([`zaps`]).

pub mod payments;
pub mod zaps;
