//! Proof bundles: fetched from a node, written to and read from files
//! (the canonical binary encoding or JSON).

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use cairn_identity_core::bundle::{ProofBundle, BUNDLE_MAGIC, MAX_BUNDLE_LEN};

use super::node::{status, NodeClient, StatusView, Subject};

/// Fetches the proof bundle for `subject`; fails when there is none yet.
pub async fn fetch_bundle(node: &NodeClient, subject: &Subject) -> Result<ProofBundle> {
    Ok(fetch_bundle_with_status(node, subject).await?.1)
}

pub(crate) async fn fetch_bundle_with_status(
    node: &NodeClient,
    subject: &Subject,
) -> Result<(StatusView, ProofBundle)> {
    let mut v = status(node, subject).await?;
    let bundle = v.bundle.take().ok_or_else(|| {
        anyhow!(
            "the node has no proof bundle for {subject} yet (status {}): its epoch is not anchored in a block",
            v.status
        )
    })?;
    let bundle = serde_json::from_value(bundle)
        .map_err(|e| MalformedBundle(format!("the node's bundle is not a valid bundle: {e}")))?;
    Ok((v, bundle))
}

/// How a bundle file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// The canonical binary encoding (protocol §11.2).
    Binary,
    /// The JSON form.
    Json,
}

/// Writes `bundle` to `path`; returns the number of bytes written.
pub fn write_bundle(path: &Path, bundle: &ProofBundle, format: BundleFormat) -> Result<usize> {
    let bytes = match format {
        BundleFormat::Binary => bundle.to_bytes().context("cannot encode the bundle")?,
        BundleFormat::Json => {
            let mut b = serde_json::to_vec_pretty(bundle).context("cannot encode the bundle")?;
            b.push(b'\n');
            b
        }
    };
    std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len())
}

/// Reads a bundle file, binary (starts with the `CRNP` magic) or JSON.
pub fn read_bundle(path: &Path) -> Result<ProofBundle> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    // JSON is about twice the binary size; anything far beyond is not a bundle.
    ensure!(
        meta.len() <= 4 * MAX_BUNDLE_LEN as u64,
        "{} is too large to be a bundle",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_bundle(&bytes).with_context(|| format!("{} is not a valid bundle", path.display()))
}

/// Bytes that are not a bundle in either format.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBundle(pub(crate) String);

/// Decodes bundle bytes, binary or JSON (detected by the magic).
pub fn parse_bundle(bytes: &[u8]) -> Result<ProofBundle> {
    if bytes.starts_with(BUNDLE_MAGIC) {
        return Ok(ProofBundle::from_bytes(bytes)?);
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes)
            .map_err(|e| MalformedBundle(format!("JSON bundle: {e}")).into()),
        _ => {
            Err(MalformedBundle("neither a binary bundle (CRNP…) nor a JSON bundle".into()).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_bytes_of_neither_format_are_refused() {
        assert!(parse_bundle(b"hello").is_err());
        assert!(parse_bundle(b"CRNP\x01").is_err());
        assert!(parse_bundle(b"  {\"version\": 1}").is_err());
    }
}
