//! The owner's Wallet (`/app/wallet`) and Connections (`/app/connections`)
//! pages: balances, receive (on-chain address or BOLT11 invoice, with a QR
//! code), send (on-chain, Lightning), history, channels, and the Nostr
//! Wallet Connect connections of the node's wallet.
//!
//! Invariants:
//! - Every payment, channel change and connection is made by the admin
//!   API's own operations ([`admin::send_onchain`], [`admin::pay_invoice`],
//!   [`admin::open_channel_to`], [`admin::close_channel_by`],
//!   [`admin::create_connection`]) on the same [`Payments`]: one place makes
//!   a payment, with the same checks, whoever asked for it.
//! - Every change is a `POST` checked by [`checked_post`] (session, origin,
//!   CSRF token) before anything else. A payment, a channel open or close
//!   that was made answers `303` to the page with a notice, so reloading the
//!   page cannot make it twice.
//! - A connection's `nostr+walletconnect://` URI holds the app's secret: it
//!   is shown once, on the answer to the `POST` that created it (`no-store`,
//!   as every app page), and never logged or kept.
//! - QR codes are SVG rendered here ([`qr_svg`]) and put inline into the
//!   page: no script, no image from anywhere (the CSP allows neither).
//! - When payments are off (`[payments] enabled = false`), not running, or
//!   run by another process (a standby), the pages say so and change nothing.

use std::str::FromStr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use cairn_payments::ldk_node::payment::{PaymentDirection, PaymentKind};
use cairn_payments::lightning::{InvoiceDescription, PaymentOutcome, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::nwc::SUPPORTED_METHODS;
use serde::Deserialize;

use super::app::{app_html, app_of, checked_post, signed_in_app, App};
use super::{Frame, Web};
use crate::cli::nwc::DEFAULT_PERMISSIONS;
use crate::cli::support::amounts::{parse_duration_secs, Amount};
use crate::cli::support::time::format_unix;
use crate::server::routes::admin::{self, ApiError, CreateConnectionRequest};
use crate::server::runtimes::payments::Payments;

/// Most history rows shown (newest first), of each kind.
const MAX_HISTORY: usize = 50;
/// Longest text accepted in a form field (an invoice is well under it).
const MAX_FIELD: usize = 4_000;

/// The Wallet and Connections routes.
pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/app/wallet", get(wallet_page))
        .route("/app/wallet/address", post(new_address))
        .route("/app/wallet/funding-address", post(funding_address))
        .route("/app/wallet/invoice", post(new_invoice))
        .route("/app/wallet/send", post(send_onchain))
        .route("/app/wallet/pay", post(pay_invoice))
        .route("/app/wallet/channels", post(open_channel))
        .route("/app/wallet/channels/{ucid}/close", post(close_channel))
        .route(
            "/app/connections",
            get(connections_page).post(create_connection),
        )
        .route("/app/connections/{id}/revoke", post(revoke_connection))
}

// ---------------------------------------------------------------------------
// QR codes.

/// `data` as an inline SVG QR code (dark on white in both colour schemes,
/// a quiet zone included), labelled for screen readers with `label`.
/// `None` when `data` is too long for a QR code.
pub(super) fn qr_svg(data: &str, label: &str) -> Option<String> {
    use qrcode::render::svg;
    let code =
        qrcode::QrCode::with_error_correction_level(data.as_bytes(), qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // Inline in HTML: no XML declaration; a role and a name for assistive
    // technology. The SVG holds only the crate's path data.
    let start = svg.find("<svg")?;
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .,:-".contains(*c))
        .collect();
    Some(svg[start..].replacen(
        "<svg",
        &format!("<svg role=\"img\" aria-label=\"{label}\" class=\"qr\""),
        1,
    ))
}

/// Something to receive to, shown with its QR code.
struct Receive {
    title: &'static str,
    /// The text to copy (address, invoice, URI).
    text: String,
    /// The QR code (SVG), when it fits in one.
    qr: Option<String>,
    help: String,
}

impl Receive {
    fn new(title: &'static str, text: String, qr_data: &str, help: String) -> Self {
        Self {
            qr: qr_svg(qr_data, title),
            title,
            text,
            help,
        }
    }
}

// ---------------------------------------------------------------------------
// Payments' state.

/// Why the pages cannot use the wallet here.
fn unavailable(app: &App) -> Result<Arc<Payments>, String> {
    let Some(slot) = &app.payments else {
        return Err(
            "Payments are off on this node: set [payments] enabled = true (and \
                    [bitcoin] for its Bitcoin node) in cairn.toml and restart it."
                .to_owned(),
        );
    };
    slot.running().map_err(|reason| {
        if slot.standby() {
            "This process of the node is a payments standby: another process holds the \
             payments lease and runs the wallet. Open the app on that process."
                .to_owned()
        } else {
            // The admin API's reason (the chain source's redacted URL at most).
            format!("The wallet is not running here yet: {reason}")
        }
    })
}

fn sat(msat: u64) -> String {
    if msat % 1_000 == 0 {
        format!("{} sat", msat / 1_000)
    } else {
        format!("{}.{:03} sat", msat / 1_000, msat % 1_000)
    }
}

/// An amount field: empty is `None`; `2000`, `2000sat`, `0.001btc` as the
/// CLI reads them, in whole satoshis.
fn amount_field(text: &str, what: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    Amount::from_str(t)
        .and_then(|a| a.sat())
        .map(Some)
        .map_err(|e| format!("{what}: {e}"))
}

fn too_long(fields: &[&str]) -> bool {
    fields.iter().any(|f| f.len() > MAX_FIELD)
}

// ---------------------------------------------------------------------------
// The Wallet page.

struct ChannelView {
    ucid: String,
    peer: String,
    capacity: String,
    outbound: String,
    inbound: String,
    state: String,
}

struct TxView {
    txid: String,
    net: String,
    fee: String,
    when: String,
}

struct PaymentView {
    direction: &'static str,
    kind: &'static str,
    amount: String,
    fee: String,
    status: &'static str,
    hash: String,
    when: String,
}

#[derive(Template)]
#[template(path = "app/wallet.html")]
struct WalletPage {
    frame: Frame,
    app_csrf: Option<String>,
    csrf: String,
    unavailable: Option<String>,
    notice: Option<String>,
    error: Option<String>,
    receive: Option<Receive>,
    network: String,
    onchain_confirmed: String,
    onchain_pending: String,
    ln_spendable: String,
    ln_onchain_total: String,
    ln_onchain_spendable: String,
    node_id: String,
    listening: Option<String>,
    channels: Vec<ChannelView>,
    transactions: Vec<TxView>,
    payments: Vec<PaymentView>,
    /// This rendering's one-time token for the forms that pay.
    pay_token: String,
}

/// What the page says after a change, from its `303` (ids only: nothing
/// a link from elsewhere could use to put words on the page).
#[derive(Deserialize, Default)]
struct WalletQuery {
    sent: Option<String>,
    paid: Option<String>,
    pending: Option<String>,
    opened: Option<String>,
    note: Option<String>,
    closing: Option<String>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit())
}

impl WalletQuery {
    fn notice(&self) -> Option<String> {
        if let Some(t) = self.sent.as_deref().filter(|t| is_hex(t, 64)) {
            return Some(format!(
                "Sent on-chain: transaction {t}. It counts once it is in a block."
            ));
        }
        if let Some(h) = self.paid.as_deref().filter(|h| is_hex(h, 64)) {
            return Some(format!("Paid: the Lightning payment {h} succeeded."));
        }
        if let Some(h) = self.pending.as_deref().filter(|h| is_hex(h, 64)) {
            return Some(format!(
                "The Lightning payment {h} is still in flight; its outcome shows in the history."
            ));
        }
        if let Some(u) = self.opened.as_deref().filter(|u| is_decimal(u)) {
            let note = if self.note.is_some() {
                " This node was already connected to the peer at another address: the channel uses that connection."
            } else {
                ""
            };
            return Some(format!(
                "Channel {u} is opening: it is usable once its funding transaction confirms.{note}"
            ));
        }
        if let Some(u) = self.closing.as_deref().filter(|u| is_decimal(u)) {
            return Some(format!(
                "Channel {u} is closing: its funds return to the Lightning node's on-chain wallet."
            ));
        }
        None
    }
}

/// `GET /app/wallet`.
async fn wallet_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<WalletQuery>,
) -> Response {
    let (app, session) = match signed_in_app(&web, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    render_wallet(
        &web,
        app,
        &session.csrf,
        StatusCode::OK,
        q.notice(),
        None,
        None,
    )
    .await
}

async fn render_wallet(
    web: &Web,
    app: &App,
    csrf: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    receive: Option<Receive>,
) -> Response {
    let mut page = WalletPage {
        frame: Frame::of(web),
        app_csrf: Some(csrf.to_owned()),
        csrf: csrf.to_owned(),
        pay_token: super::once::OnceTokens::fresh(),
        unavailable: None,
        notice,
        error,
        receive,
        network: String::new(),
        onchain_confirmed: String::new(),
        onchain_pending: String::new(),
        ln_spendable: String::new(),
        ln_onchain_total: String::new(),
        ln_onchain_spendable: String::new(),
        node_id: String::new(),
        listening: None,
        channels: Vec::new(),
        transactions: Vec::new(),
        payments: Vec::new(),
    };
    let p = match unavailable(app) {
        Ok(p) => p,
        Err(why) => {
            page.unavailable = Some(why);
            return app_html(status, page.render());
        }
    };
    // The admin API's balance, read the same way (the wallet's std mutex on
    // the blocking pool, see `admin::blocking`).
    let wallet = Arc::clone(p.wallet());
    let (onchain, mut txs) =
        match admin::blocking(move || Ok((wallet.balance(), wallet.transactions()))).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = e.message(), "web: the wallet did not answer");
                page.unavailable =
                    Some("The wallet did not answer; see the node's log.".to_owned());
                return app_html(status, page.render());
            }
        };
    let ln = p.lightning();
    let balances = ln.balances();
    page.network = p.network().to_string();
    page.onchain_confirmed = format!("{} sat", onchain.confirmed.to_sat());
    page.onchain_pending = format!("{} sat", onchain.pending.to_sat());
    page.ln_spendable = format!("{} sat", ln.channel_balance_sats());
    page.ln_onchain_total = format!("{} sat", balances.total_onchain_balance_sats);
    page.ln_onchain_spendable = format!("{} sat", balances.spendable_onchain_balance_sats);
    page.node_id = ln.node_id().to_string();
    page.listening = ln.listening_address().map(|a| a.to_string());
    page.channels = ln
        .list_channels()
        .iter()
        .map(|c| ChannelView {
            ucid: c.user_channel_id.0.to_string(),
            peer: c.counterparty_node_id.to_string(),
            capacity: format!("{} sat", c.channel_value_sats),
            outbound: sat(c.outbound_capacity_msat),
            inbound: sat(c.inbound_capacity_msat),
            state: if c.is_usable {
                "usable".to_owned()
            } else if c.is_channel_ready {
                "ready, peer offline".to_owned()
            } else {
                format!("opening ({} confirmations)", c.confirmations.unwrap_or(0))
            },
        })
        .collect();
    // Unconfirmed first, then newest.
    txs.sort_by_key(|t| std::cmp::Reverse(t.confirmation_height.unwrap_or(u32::MAX)));
    page.transactions = txs
        .iter()
        .take(MAX_HISTORY)
        .map(|t| {
            let net = t.net_sats();
            TxView {
                txid: t.txid.to_string(),
                net: format!("{}{net} sat", if net > 0 { "+" } else { "" }),
                fee: t
                    .fee
                    .map(|f| format!("{} sat", f.to_sat()))
                    .unwrap_or_default(),
                when: match (t.confirmation_height, t.time) {
                    (Some(h), Some(time)) => format!("block {h}, {}", format_unix(time)),
                    (Some(h), None) => format!("block {h}"),
                    (None, _) => "unconfirmed".to_owned(),
                },
            }
        })
        .collect();
    let mut payments: Vec<_> = ln
        .list_payments()
        .into_iter()
        .filter(|p| !matches!(p.kind, PaymentKind::Onchain { .. }))
        .collect();
    payments.sort_by_key(|p| std::cmp::Reverse(p.latest_update_timestamp));
    page.payments = payments
        .iter()
        .take(MAX_HISTORY)
        .map(|d| PaymentView {
            direction: match d.direction {
                PaymentDirection::Inbound => "received",
                PaymentDirection::Outbound => "sent",
            },
            kind: admin::kind_name(&d.kind),
            amount: d.amount_msat.map(sat).unwrap_or_else(|| "any".to_owned()),
            fee: d.fee_paid_msat.map(sat).unwrap_or_default(),
            status: admin::status_name(d.status),
            hash: cairn_payments::lightning::payment_hash_of(d)
                .map(|h| hex::encode(h.0))
                .unwrap_or_else(|| hex::encode(d.id.0)),
            when: format_unix(d.latest_update_timestamp),
        })
        .collect();
    app_html(status, page.render())
}

/// A form's change, checked, with payments running: the session's CSRF
/// token and the payments, or the answer to send back.
// The error is the answer to send back at once; it is built only on that path.
#[allow(clippy::result_large_err)]
async fn checked(
    web: &Web,
    headers: &HeaderMap,
    csrf: Option<&str>,
    back: &str,
) -> Result<(String, Result<Arc<Payments>, String>), Response> {
    let app = app_of(web)?;
    let session = checked_post(web, app, headers, csrf, back).await?;
    Ok((session.csrf, unavailable(app)))
}

/// Runs `f` for a checked wallet form and answers its page; the error text
/// shows on the page (`400`, or `503` when payments are not running here).
/// Spends a paying form's one-time token: a second POST of one form (a
/// double click, a replay) pays nothing.
async fn spend_form(web: &Web, token: &str) -> Result<(), String> {
    let fresh = match app_of(web) {
        Ok(app) => app.paid_forms.spend(token).await,
        Err(_) => false,
    };
    if fresh {
        Ok(())
    } else {
        Err("This form was already sent, so nothing was paid again. \
             Check the history below before paying again."
            .to_owned())
    }
}

macro_rules! wallet_form {
    ($web:expr, $headers:expr, $csrf:expr, |$p:ident| $body:expr) => {{
        let (csrf, payments) = match checked(&$web, &$headers, $csrf, "/app/wallet").await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let app = match app_of(&$web) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let $p = match payments {
            Ok(p) => p,
            Err(_) => {
                return render_wallet(
                    &$web,
                    app,
                    &csrf,
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    None,
                    None,
                )
                .await
            }
        };
        let outcome: Result<Outcome, String> = $body;
        match outcome {
            Ok(Outcome::Redirect(to)) => Redirect::to(&to).into_response(),
            Ok(Outcome::Show(receive)) => {
                render_wallet(&$web, app, &csrf, StatusCode::OK, None, None, Some(receive)).await
            }
            Err(e) => {
                render_wallet(
                    &$web,
                    app,
                    &csrf,
                    StatusCode::BAD_REQUEST,
                    None,
                    Some(e),
                    None,
                )
                .await
            }
        }
    }};
}

/// What a wallet form ends in.
enum Outcome {
    /// A change was made: `303` to the page with its notice.
    Redirect(String),
    /// Something to receive to, shown on the page.
    Show(Receive),
}

fn api(e: ApiError) -> String {
    e.message().to_owned()
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: Option<String>,
}

/// `POST /app/wallet/address`: a fresh receive address of the node's wallet.
async fn new_address(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        let wallet = Arc::clone(p.wallet());
        match admin::blocking(move || Ok(wallet.receive_address()?)).await {
            Ok(addr) => {
                let text = addr.to_string();
                Ok(Outcome::Show(Receive::new(
                    "On-chain address",
                    text.clone(),
                    &format!("bitcoin:{}", text.to_ascii_uppercase()),
                    format!(
                        "A new address of this node's wallet ({}). Each press of the button gives a new one.",
                        p.network()
                    ),
                )))
            }
            Err(e) => Err(api(e)),
        }
    })
}

/// `POST /app/wallet/funding-address`: an address of the Lightning node's
/// own on-chain wallet, which pays for channels.
async fn funding_address(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        match p.lightning().funding_address() {
            Ok(addr) => {
                let text = addr.to_string();
                Ok(Outcome::Show(Receive::new(
                    "Channel funding address",
                    text.clone(),
                    &format!("bitcoin:{}", text.to_ascii_uppercase()),
                    "An address of the Lightning node's own on-chain wallet: coins sent here \
                     can open channels once they confirm."
                        .to_owned(),
                )))
            }
            Err(e) => Err(api(e.into())),
        }
    })
}

#[derive(Deserialize)]
struct InvoiceForm {
    csrf: Option<String>,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    description: String,
}

/// `POST /app/wallet/invoice`: a BOLT11 invoice of the Lightning node.
async fn new_invoice(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<InvoiceForm>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        async {
            if too_long(&[&form.amount, &form.description]) {
                return Err("A field is too long.".to_owned());
            }
            let amount = amount_field(&form.amount, "Amount")?;
            let description = InvoiceDescription::Text(form.description.trim().to_owned());
            let inv = p
                .lightning()
                .receive_bolt11(
                    amount.map(|s| s * 1_000),
                    &description,
                    DEFAULT_INVOICE_EXPIRY_SECS,
                )
                .map_err(|e| api(e.into()))?;
            let text = inv.to_string();
            let what = match amount {
                Some(s) => format!("{s} sat"),
                None => "any amount".to_owned(),
            };
            Ok(Outcome::Show(Receive::new(
                "Lightning invoice",
                text.clone(),
                &format!("lightning:{}", text.to_ascii_uppercase()),
                format!(
                    "A BOLT11 invoice for {what}, valid for {} minutes; it is paid once.",
                    DEFAULT_INVOICE_EXPIRY_SECS / 60
                ),
            )))
        }
        .await
    })
}

#[derive(Deserialize)]
struct SendForm {
    csrf: Option<String>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    fee_rate: String,
    /// The form's one-time token ([`super::once`]).
    #[serde(default)]
    pay_token: String,
}

/// `POST /app/wallet/send`: pays on-chain, through the admin API's send.
async fn send_onchain(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        async {
            if too_long(&[&form.address, &form.amount, &form.fee_rate]) {
                return Err("A field is too long.".to_owned());
            }
            let amount = amount_field(&form.amount, "Amount")?
                .ok_or_else(|| "Give the amount to send.".to_owned())?;
            let fee_rate = match form.fee_rate.trim() {
                "" => None,
                r => Some(r.parse::<u64>().map_err(|_| {
                    "The fee rate is a whole number of sat/vB (or empty for the node's default)."
                        .to_owned()
                })?),
            };
            spend_form(&web, &form.pay_token).await?;
            let txid = admin::send_onchain(&p, &form.address, amount, fee_rate)
                .await
                .map_err(api)?;
            tracing::info!(%txid, amount_sat = amount, "web: on-chain payment sent");
            Ok(Outcome::Redirect(format!("/app/wallet?sent={txid}")))
        }
        .await
    })
}

#[derive(Deserialize)]
struct PayForm {
    csrf: Option<String>,
    #[serde(default)]
    invoice: String,
    #[serde(default)]
    amount: String,
    /// The form's one-time token ([`super::once`]).
    #[serde(default)]
    pay_token: String,
}

/// `POST /app/wallet/pay`: pays a BOLT11 invoice, through the admin API's pay.
async fn pay_invoice(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<PayForm>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        async {
            if too_long(&[&form.invoice, &form.amount]) {
                return Err("A field is too long.".to_owned());
            }
            let invoice = form.invoice.trim();
            let invoice = invoice
                .strip_prefix("lightning:")
                .or_else(|| invoice.strip_prefix("LIGHTNING:"))
                .unwrap_or(invoice);
            let amount_msat = amount_field(&form.amount, "Amount")?.map(|s| s * 1_000);
            spend_form(&web, &form.pay_token).await?;
            let sent = admin::pay_invoice(&p, invoice, amount_msat)
                .await
                .map_err(api)?;
            let hash = sent
                .payment_hash
                .map_or_else(|| hex::encode(sent.id.0), |h| hex::encode(h.0));
            match sent.outcome {
                PaymentOutcome::Succeeded { .. } => {
                    tracing::info!(payment_hash = %hash, "web: Lightning payment succeeded");
                    Ok(Outcome::Redirect(format!("/app/wallet?paid={hash}")))
                }
                PaymentOutcome::Pending => {
                    Ok(Outcome::Redirect(format!("/app/wallet?pending={hash}")))
                }
                PaymentOutcome::Failed { reason } => Err(format!(
                    "The payment failed: {reason}. No money moved; you may try again."
                )),
            }
        }
        .await
    })
}

#[derive(Deserialize)]
struct OpenForm {
    csrf: Option<String>,
    #[serde(default)]
    peer: String,
    #[serde(default)]
    amount: String,
}

/// `POST /app/wallet/channels`: opens a channel to `node_id@host:port`.
async fn open_channel(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<OpenForm>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        async {
            if too_long(&[&form.peer, &form.amount]) {
                return Err("A field is too long.".to_owned());
            }
            let (node_id, address) = form.peer.trim().split_once('@').ok_or_else(|| {
                "The peer is its node id, @, and its host:port (node_id@host:port).".to_owned()
            })?;
            let amount = amount_field(&form.amount, "Amount")?
                .ok_or_else(|| "Give the channel's amount.".to_owned())?;
            let (ucid, note) = admin::open_channel_to(&p, node_id, address, amount, None)
                .await
                .map_err(api)?;
            tracing::info!(
                user_channel_id = ucid.0,
                amount_sat = amount,
                "web: channel opening"
            );
            let note = if note.is_some() { "&note=1" } else { "" };
            Ok(Outcome::Redirect(format!(
                "/app/wallet?opened={}{note}",
                ucid.0
            )))
        }
        .await
    })
}

#[derive(Deserialize)]
struct CloseForm {
    csrf: Option<String>,
    force: Option<String>,
}

/// `POST /app/wallet/channels/{ucid}/close`.
async fn close_channel(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(ucid): Path<String>,
    Form(form): Form<CloseForm>,
) -> Response {
    wallet_form!(web, headers, form.csrf.as_deref(), |p| {
        async {
            let force = form.force.is_some();
            admin::close_channel_by(&p, &ucid, force)
                .await
                .map_err(api)?;
            tracing::info!(user_channel_id = %ucid, force, "web: channel closing");
            Ok::<_, String>(Outcome::Redirect(format!(
                "/app/wallet?closing={}",
                ucid.trim()
            )))
        }
        .await
    })
}

// ---------------------------------------------------------------------------
// Connections (NWC).

struct ConnectionView {
    id: i64,
    name: String,
    permissions: String,
    budget: String,
    max: String,
    expires: String,
    state: &'static str,
    active: bool,
}

struct PermissionChoice {
    name: &'static str,
    checked: bool,
}

#[derive(Template)]
#[template(path = "app/connections.html")]
struct ConnectionsPage {
    frame: Frame,
    app_csrf: Option<String>,
    csrf: String,
    unavailable: Option<String>,
    notice: Option<String>,
    error: Option<String>,
    connections: Vec<ConnectionView>,
    permissions: Vec<PermissionChoice>,
}

#[derive(Template)]
#[template(path = "app/connection_created.html")]
struct CreatedPage {
    frame: Frame,
    app_csrf: Option<String>,
    id: i64,
    name: String,
    /// The URI and its QR code (`r`: the name `app/qr.html` reads).
    r: Receive,
}

#[derive(Deserialize, Default)]
struct ConnectionsQuery {
    revoked: Option<String>,
}

/// `GET /app/connections`.
async fn connections_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<ConnectionsQuery>,
) -> Response {
    let (app, session) = match signed_in_app(&web, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice = q
        .revoked
        .filter(|id| is_decimal(id))
        .map(|id| format!("Connection {id} is revoked: its app can no longer use the wallet."));
    render_connections(&web, app, &session.csrf, StatusCode::OK, notice, None).await
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn render_connections(
    web: &Web,
    app: &App,
    csrf: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let defaults: Vec<&str> = DEFAULT_PERMISSIONS.split(',').collect();
    let mut page = ConnectionsPage {
        frame: Frame::of(web),
        app_csrf: Some(csrf.to_owned()),
        csrf: csrf.to_owned(),
        unavailable: None,
        notice,
        error,
        connections: Vec::new(),
        permissions: SUPPORTED_METHODS
            .iter()
            .map(|&name| PermissionChoice {
                name,
                checked: defaults.contains(&name),
            })
            .collect(),
    };
    let p = match unavailable(app) {
        Ok(p) => p,
        Err(why) => {
            page.unavailable = Some(why);
            return app_html(status, page.render());
        }
    };
    let store = p.nwc().store();
    // The admin API's list: the store's connections and their spending in
    // the current budget window (no secrets: they are not kept).
    let list = match store.list_connections() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "web: cannot list NWC connections");
            page.error = Some("The connections could not be read; see the node's log.".to_owned());
            return app_html(StatusCode::INTERNAL_SERVER_ERROR, page.render());
        }
    };
    let now = now_secs();
    page.connections = list
        .iter()
        .rev()
        .map(|c| {
            let spent = store.spent_in_window(c).unwrap_or(0);
            ConnectionView {
                id: c.id,
                name: c.name.clone(),
                permissions: c.permissions.join(", "),
                budget: match c.budget_msat {
                    Some(b) => format!("{} of {} {}", sat(spent), sat(b), c.renewal.as_str()),
                    None => format!("{} spent, no budget", sat(spent)),
                },
                max: c
                    .max_payment_msat
                    .map(sat)
                    .unwrap_or_else(|| "none".to_owned()),
                expires: c
                    .expires_at
                    .map(format_unix)
                    .unwrap_or_else(|| "never".to_owned()),
                state: if c.revoked {
                    "revoked"
                } else if c.is_active(now) {
                    "active"
                } else {
                    "expired"
                },
                active: !c.revoked,
            }
        })
        .collect();
    app_html(status, page.render())
}

/// `POST /app/connections`: creates a connection through the admin API's
/// create, and shows its URI once. Repeated `permissions` fields, so the
/// form is read as pairs.
async fn create_connection(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    let (token, payments) = match checked(&web, &headers, csrf, "/app/connections").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let p = match payments {
        Ok(p) => p,
        Err(_) => {
            return render_connections(
                &web,
                app,
                &token,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                None,
            )
            .await
        }
    };
    let request = (|| {
        if fields.iter().any(|(_, v)| v.len() > MAX_FIELD) || fields.len() > 64 {
            return Err("A field is too long.".to_owned());
        }
        let expires = field("expires").trim();
        Ok(CreateConnectionRequest {
            name: field("name").trim().chars().take(100).collect(),
            budget_sat: amount_field(field("budget"), "Budget")?,
            budget_period: Some(field("period").trim().to_owned()).filter(|s| !s.is_empty()),
            max_payment_sat: amount_field(field("max"), "Per-payment maximum")?,
            permissions: fields
                .iter()
                .filter(|(k, _)| k == "permissions")
                .map(|(_, v)| v.trim().to_owned())
                .collect(),
            expires_in_secs: if expires.is_empty() {
                None
            } else {
                Some(parse_duration_secs(expires).map_err(|e| format!("Expiry: {e}"))?)
            },
        })
    })();
    let created = request.and_then(|r| admin::create_connection(&p, r).map_err(api));
    match created {
        Ok((conn, uri)) => app_html(
            StatusCode::OK,
            CreatedPage {
                frame: Frame::of(&web),
                app_csrf: Some(token),
                id: conn.id,
                name: conn.name,
                r: Receive::new(
                    "Connection URI",
                    uri.clone(),
                    &uri,
                    "Scan it with the app, or copy it into the app's \"connect a wallet\" field."
                        .to_owned(),
                ),
            }
            .render(),
        ),
        Err(e) => {
            render_connections(&web, app, &token, StatusCode::BAD_REQUEST, None, Some(e)).await
        }
    }
}

/// `POST /app/connections/{id}/revoke`.
async fn revoke_connection(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let (token, payments) =
        match checked(&web, &headers, form.csrf.as_deref(), "/app/connections").await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let app = match app_of(&web) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let result = match (&payments, id.trim().parse::<i64>()) {
        (Err(_), _) => Err(None),
        (Ok(_), Err(_)) => Err(Some("The connection id is a number.".to_owned())),
        (Ok(p), Ok(id)) => p
            .nwc()
            .revoke(id)
            .map(|()| id)
            .map_err(|e| Some(api(e.into()))),
    };
    match result {
        Ok(id) => {
            tracing::info!(id, "web: NWC connection revoked");
            Redirect::to(&format!("/app/connections?revoked={id}")).into_response()
        }
        Err(error) => {
            let status = if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            render_connections(&web, app, &token, status, None, error).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_codes_are_inline_svg_with_a_name_and_nothing_else() {
        let svg = qr_svg(
            "bitcoin:BCRT1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KYGT080",
            "On-chain address",
        )
        .expect("fits");
        assert!(
            svg.starts_with("<svg role=\"img\" aria-label=\"On-chain address\""),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>"), "{svg}");
        assert!(!svg.contains("<?xml"));
        assert!(!svg.contains("<script") && !svg.contains("href"), "{svg}");
        // A label cannot break out of its attribute.
        let svg = qr_svg("x", "a\"><script>").unwrap();
        assert!(!svg.contains("<script"), "{svg}");
        // Too much for a QR code: no code rather than a broken one.
        assert!(qr_svg(&"x".repeat(5_000), "big").is_none());
    }

    #[test]
    fn notices_name_only_ids() {
        let q = WalletQuery {
            sent: Some("<b>".to_owned()),
            ..Default::default()
        };
        assert_eq!(q.notice(), None);
        let q = WalletQuery {
            sent: Some("ab".repeat(32)),
            ..Default::default()
        };
        assert!(q.notice().unwrap().contains(&"ab".repeat(32)));
        let q = WalletQuery {
            opened: Some("12345".to_owned()),
            note: Some("1".to_owned()),
            ..Default::default()
        };
        assert!(q.notice().unwrap().contains("already connected"));
    }

    #[test]
    fn amounts_read_as_the_cli_reads_them() {
        assert_eq!(amount_field(" ", "A"), Ok(None));
        assert_eq!(amount_field("5000", "A"), Ok(Some(5_000)));
        assert_eq!(amount_field("0.0001btc", "A"), Ok(Some(10_000)));
        assert!(amount_field("five", "A").unwrap_err().starts_with("A: "));
        assert!(
            amount_field("1500msat", "A").is_err(),
            "whole satoshis only"
        );
    }
}
