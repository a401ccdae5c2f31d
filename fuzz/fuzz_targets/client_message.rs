//! Arbitrary bytes as one incoming WebSocket text frame, parsed the way the
//! relay's session does (`ClientMessage::parse`), then the size checks a REQ
//! or COUNT goes through before it reaches the store.
//!
//! Must never panic: every input is either a message or a `ParseError` the
//! session can answer with NOTICE, OK or CLOSED.

#![no_main]

use cairn_relay::config::Limits;
use cairn_relay::matching::{check_sizes, filter_values};
use cairn_relay::message::{ClientMessage, ParseError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A WebSocket text frame is UTF-8 by the time the session sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Req { filters, .. }) | Ok(ClientMessage::Count { filters, .. }) => {
            let limits = Limits::default();
            let total: usize = filters.iter().map(filter_values).sum();
            if let Ok(counted) = check_sizes(&limits, &filters, 0) {
                assert_eq!(
                    counted, total,
                    "check_sizes counts what filter_values counts"
                );
            }
        }
        Ok(ClientMessage::Close(id)) => {
            // Sub ids are echoed in CLOSED/EOSE: they must build a JSON message.
            let out = cairn_relay::message::out::closed(&id, "x");
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        }
        Ok(ClientMessage::Event(_)) | Ok(ClientMessage::Auth(_)) => {}
        Ok(ClientMessage::NegOpen { sub_id, .. })
        | Ok(ClientMessage::NegMsg { sub_id, .. })
        | Ok(ClientMessage::NegClose(sub_id)) => {
            let out = cairn_relay::message::out::neg_err(&sub_id, "x", None);
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        }
        Err(ParseError::BadNeg { sub_id, message }) => {
            let out = cairn_relay::message::out::neg_err(&sub_id, &message, None);
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        }
        Err(ParseError::BadEvent { id, message }) => {
            let out = cairn_relay::message::out::ok(&id, false, &message);
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        }
        Err(ParseError::BadFilter { sub_id, message }) => {
            let out = cairn_relay::message::out::closed(&sub_id, &message);
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        }
        Err(ParseError::Notice(message)) => {
            let out = cairn_relay::message::out::notice(&message);
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
        }
    }
});
