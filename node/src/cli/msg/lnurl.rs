//! Paying a name through the user's own node: LNURL-pay (LUD-06) on the
//! payee's node, checked before and after paying, or an on-chain address the
//! payee's node gives for the name.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::{Network, Txid};
use cairn_payments::message_payment::{
    check_lnurl_invoice, check_preimage, parse_preimage, MessagePayment, OnchainRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::support::admin::AdminClient;

/// Bound on each HTTP request (LNURL, the payee's node).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The LNURL-pay metadata (LUD-06) of each of `names` on the node at
/// `node_url`; names whose LNURL does not answer are left out (logged).
pub async fn lnurl_metadata(
    http: &reqwest::Client,
    node_url: &str,
    names: &[String],
) -> Vec<String> {
    let base = node_url.trim_end_matches('/');
    let mut out = Vec::new();
    for name in names {
        let url = format!("{base}/.well-known/lnurlp/{name}");
        match get_json(http, &url, "LNURL-pay").await {
            Ok(v) => match v["metadata"].as_str() {
                Some(m) => out.push(m.to_owned()),
                None => tracing::warn!("{url} gave no LNURL metadata"),
            },
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    out
}

/// The LUD-06 payRequest answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayRequestAnswer {
    callback: String,
    min_sendable: u64,
    max_sendable: u64,
    metadata: String,
    tag: String,
}

/// Pays `amount_msat` to `name`'s LNURL-pay on `node_url` through `admin`:
/// plain LUD-06 (no `nostr` parameter: a private message must not cause a
/// public zap receipt), checking the invoice's amount and description hash
/// before paying and the preimage after.
pub async fn pay_lightning(
    http: &reqwest::Client,
    admin: &AdminClient,
    node_url: &str,
    name: &str,
    amount_msat: u64,
    network: Network,
) -> Result<MessagePayment> {
    let base = node_url.trim_end_matches('/');
    let lnurl = format!("{base}/.well-known/lnurlp/{name}");
    let answer: Value = get_json(http, &lnurl, "LNURL-pay").await?;
    lnurl_error(&answer, "LNURL-pay")?;
    let pr: PayRequestAnswer = serde_json::from_value(answer)
        .with_context(|| format!("{lnurl} is not an LNURL-pay answer"))?;
    ensure!(pr.tag == "payRequest", "{lnurl} is not a payRequest");
    ensure!(
        (pr.min_sendable..=pr.max_sendable).contains(&amount_msat),
        "@{name} accepts {}..={} msat, not {amount_msat}",
        pr.min_sendable,
        pr.max_sendable
    );
    let mut callback = url::Url::parse(&pr.callback).context("the LNURL callback URL")?;
    callback
        .query_pairs_mut()
        .append_pair("amount", &amount_msat.to_string());
    let answer: Value = get_json(http, callback.as_str(), "LNURL callback").await?;
    lnurl_error(&answer, "LNURL callback")?;
    let invoice_text = answer["pr"]
        .as_str()
        .ok_or_else(|| anyhow!("the LNURL callback gave no invoice"))?;
    let invoice = check_lnurl_invoice(invoice_text, amount_msat, &pr.metadata, network)
        .context("refusing the LNURL invoice")?;
    let paid: Value = admin
        .post(
            "/admin/v1/lightning/pay",
            &json!({ "invoice": invoice.to_string() }),
        )
        .await
        .context("your node could not pay")?;
    ensure!(
        paid["status"] == "succeeded",
        "the payment {} is still pending and may still settle: do not pay again. \
         The message is not sent; once `cairn ln payments` shows it succeeded, send it \
         with --receipt preimage:<its preimage> --invoice {invoice}",
        paid["payment_hash"].as_str().unwrap_or("?")
    );
    let preimage = parse_preimage(paid["preimage"].as_str().unwrap_or_default())
        .context("your node's answer has no valid preimage")?;
    check_preimage(&invoice, &preimage).context("your node's preimage")?;
    Ok(MessagePayment::lightning(invoice, preimage))
}

/// Pays `amount_msat` (whole satoshis) on-chain to an address of `name`'s
/// node (`/payments/v1/names/{name}/onchain`), through `admin`.
pub async fn pay_onchain(
    http: &reqwest::Client,
    admin: &AdminClient,
    node_url: &str,
    name: &str,
    amount_msat: u64,
    network: Network,
) -> Result<MessagePayment> {
    ensure!(
        amount_msat % 1000 == 0,
        "on-chain amounts are whole satoshis"
    );
    let amount_sat = amount_msat / 1000;
    let base = node_url.trim_end_matches('/');
    let url = format!("{base}/payments/v1/names/{name}/onchain?amount_sat={amount_sat}");
    let answer: Value = get_json(http, &url, "on-chain address").await?;
    let address = answer["address"]
        .as_str()
        .ok_or_else(|| anyhow!("{url} gave no address"))?;
    let bip21 = answer["bip21"]
        .as_str()
        .ok_or_else(|| anyhow!("{url} gave no BIP21 URI"))?;
    let request = OnchainRequest::parse(bip21).context("the payee's BIP21 URI")?;
    request
        .check_answer(address, amount_sat, network)
        .context("refusing the payee's address")?;
    let sent: Value = admin
        .post(
            "/admin/v1/wallet/send",
            &json!({ "address": address, "amount_sat": amount_sat }),
        )
        .await
        .context("your node could not pay")?;
    let txid = sent["txid"]
        .as_str()
        .and_then(|t| Txid::from_str(t).ok())
        .ok_or_else(|| anyhow!("your node's answer has no txid"))?;
    Ok(MessagePayment::onchain(request, txid))
}

fn lnurl_error(answer: &Value, what: &str) -> Result<()> {
    if answer["status"] == "ERROR" {
        bail!(
            "{what}: {}",
            answer["reason"].as_str().unwrap_or("the service refused")
        );
    }
    Ok(())
}

async fn get_json(http: &reqwest::Client, url: &str, what: &str) -> Result<Value> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach {url}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{what}: {url} did not answer JSON ({status})"))?;
    if !status.is_success() && body["status"] != "ERROR" {
        bail!(
            "{what}: {url} answered {status}: {}",
            body["error"]
                .as_str()
                .or(body["reason"].as_str())
                .unwrap_or("")
        );
    }
    Ok(body)
}

/// The HTTP client for LNURL and the payee's node (bounded requests).
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

/// The network of the node behind `admin` (`/admin/v1/status`).
pub async fn node_network(admin: &AdminClient) -> Result<Network> {
    let status: Value = admin
        .get("/admin/v1/status")
        .await
        .context("asking your node for its status")?;
    let n = status["network"].as_str().unwrap_or_default();
    Network::from_str(n).map_err(|_| anyhow!("your node reports an unknown network `{n}`"))
}
