//! `/` for a browser: what this node is, its relay URL, and what it offers
//! — only what this node's configuration enables.

use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cairn_relay::nip11::supported_nips;

use super::{html, Frame, Web};

/// The identity witness, when enabled.
struct WitnessInfo {
    witness: String,
    network: String,
    confirmations: u32,
}

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    frame: Frame,
    description: String,
    relay_url: String,
    contact: Option<String>,
    nips: String,
    witness: Option<WitnessInfo>,
    lightning_addresses: Vec<String>,
}

pub(super) fn page(web: &Web, headers: &HeaderMap) -> Response {
    let config = web.relay.config();
    let witness = match &web.identity {
        Some(identity) => {
            let service = &identity.service;
            Some(WitnessInfo {
                witness: nostr::nips::nip19::ToBech32::to_bech32(&service.witness_public_key())
                    .unwrap_or_default(),
                network: service.config().network.to_string(),
                confirmations: identity.confirmations,
            })
        }
        None => None,
    };
    let host = web
        .base_url(headers)
        .split_once("://")
        .map(|(_, host)| host.to_owned())
        .unwrap_or_default();
    let page = Home {
        frame: Frame::of(web),
        description: config.description.clone(),
        relay_url: web.relay.public_url().to_owned(),
        contact: config.contact.clone(),
        // The NIP-11 document's list, so the page and NIP-11 agree (77 only
        // while negentropy is enabled).
        nips: supported_nips(config)
            .iter()
            .map(|n| format!("{n:02}"))
            .collect::<Vec<_>>()
            .join(", "),
        witness,
        lightning_addresses: web
            .lightning_names
            .iter()
            .map(|name| format!("{}@{host}", name.trim_start_matches('@')))
            .collect(),
    };
    html(StatusCode::OK, page.render())
}
