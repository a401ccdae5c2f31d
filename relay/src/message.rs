//! Parsing client messages (NIP-01, NIP-42, NIP-45, NIP-77) and building relay messages.
//!
//! Incoming text is split into its top-level array elements as raw JSON so
//! that each part is parsed once, into exactly the type it should be, and a
//! malformed part yields a precise error instead of a generic one.

use nostr::{Event, Filter, JsonUtil};
use serde_json::value::RawValue;

/// A parsed client message.
#[derive(Debug)]
pub enum ClientMessage {
    /// `["EVENT", <event>]`
    Event(Box<Event>),
    /// `["REQ", <sub id>, <filter>...]`
    Req {
        /// Subscription id.
        sub_id: String,
        /// Filters, OR-ed.
        filters: Vec<Filter>,
    },
    /// `["COUNT", <sub id>, <filter>...]` (NIP-45)
    Count {
        /// Query id.
        sub_id: String,
        /// Filters, OR-ed.
        filters: Vec<Filter>,
    },
    /// `["CLOSE", <sub id>]`
    Close(String),
    /// `["AUTH", <signed kind 22242 event>]` (NIP-42)
    Auth(Box<Event>),
    /// `["NEG-OPEN", <sub id>, <filter>, <initial message, hex>]` (NIP-77)
    NegOpen {
        /// Session id (its own namespace, apart from REQ's).
        sub_id: String,
        /// The one filter whose matches are reconciled.
        filter: Box<Filter>,
        /// The negentropy message, hex-encoded.
        message: String,
    },
    /// `["NEG-MSG", <sub id>, <message, hex>]` (NIP-77)
    NegMsg {
        /// Session id.
        sub_id: String,
        /// The negentropy message, hex-encoded.
        message: String,
    },
    /// `["NEG-CLOSE", <sub id>]` (NIP-77)
    NegClose(String),
}

/// Why a client message could not be parsed, and how to answer it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Answer with a NOTICE: there is no id to answer with OK/CLOSED.
    #[error("{0}")]
    Notice(String),
    /// An EVENT/AUTH whose id could be read but whose event is malformed:
    /// answer `OK <id> false`.
    #[error("{message}")]
    BadEvent {
        /// The event id as sent (hex).
        id: String,
        /// Reason, prefixed.
        message: String,
    },
    /// A NEG-OPEN/NEG-MSG with a readable session id but a bad filter or
    /// message: answer `NEG-ERR <sub id>`.
    #[error("{message}")]
    BadNeg {
        /// The session id.
        sub_id: String,
        /// Reason, prefixed.
        message: String,
    },
    /// A REQ/COUNT with a readable subscription id but a bad filter:
    /// answer `CLOSED <sub id>`.
    #[error("{message}")]
    BadFilter {
        /// The subscription id.
        sub_id: String,
        /// Reason, prefixed.
        message: String,
    },
}

impl ClientMessage {
    /// Parse one text frame.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let parts: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|_| ParseError::Notice("invalid: message is not a JSON array".to_owned()))?;
        let Some((verb, args)) = parts.split_first() else {
            return Err(ParseError::Notice("invalid: empty message".to_owned()));
        };
        let verb: &str = serde_json::from_str(verb.get()).map_err(|_| {
            ParseError::Notice("invalid: first element must be a message type string".to_owned())
        })?;
        match verb {
            "EVENT" => Ok(Self::Event(Box::new(parse_event_arg(args, "EVENT")?))),
            "AUTH" => Ok(Self::Auth(Box::new(parse_event_arg(args, "AUTH")?))),
            "REQ" => {
                let (sub_id, filters) = parse_sub_args(args, "REQ")?;
                Ok(Self::Req { sub_id, filters })
            }
            "COUNT" => {
                let (sub_id, filters) = parse_sub_args(args, "COUNT")?;
                Ok(Self::Count { sub_id, filters })
            }
            "CLOSE" => match args {
                [id] => Ok(Self::Close(parse_sub_id(id, "CLOSE")?)),
                _ => Err(ParseError::Notice(
                    "invalid: CLOSE takes exactly one subscription id".to_owned(),
                )),
            },
            "NEG-OPEN" => parse_neg_open(args),
            "NEG-MSG" => match args {
                [id, message] => {
                    let sub_id = parse_sub_id(id, "NEG-MSG")?;
                    let message = parse_hex_arg(message, &sub_id)?;
                    Ok(Self::NegMsg { sub_id, message })
                }
                _ => Err(ParseError::Notice(
                    "invalid: NEG-MSG takes a subscription id and a message".to_owned(),
                )),
            },
            "NEG-CLOSE" => match args {
                [id] => Ok(Self::NegClose(parse_sub_id(id, "NEG-CLOSE")?)),
                _ => Err(ParseError::Notice(
                    "invalid: NEG-CLOSE takes exactly one subscription id".to_owned(),
                )),
            },
            other => Err(ParseError::Notice(format!(
                "invalid: unknown message type {}",
                truncate(other, 32)
            ))),
        }
    }
}

fn parse_event_arg(args: &[&RawValue], verb: &str) -> Result<Event, ParseError> {
    let [raw] = args else {
        return Err(ParseError::Notice(format!(
            "invalid: {verb} takes exactly one event"
        )));
    };
    Event::from_json(raw.get()).map_err(|err| {
        let message = format!(
            "invalid: malformed event: {}",
            truncate(&err.to_string(), 120)
        );
        match sent_event_id(raw) {
            Some(id) => ParseError::BadEvent { id, message },
            None => ParseError::Notice(message),
        }
    })
}

/// The `id` field of a malformed event, if it is a well-formed hex id, so
/// that the client can be answered with OK.
fn sent_event_id(raw: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: &'a str,
    }
    let IdOnly { id } = serde_json::from_str(raw.get()).ok()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

fn parse_sub_id(raw: &RawValue, verb: &str) -> Result<String, ParseError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| {
        ParseError::Notice(format!("invalid: {verb} subscription id must be a string"))
    })
}

fn parse_sub_args(args: &[&RawValue], verb: &str) -> Result<(String, Vec<Filter>), ParseError> {
    let Some((id, raw_filters)) = args.split_first() else {
        return Err(ParseError::Notice(format!(
            "invalid: {verb} needs a subscription id"
        )));
    };
    let sub_id = parse_sub_id(id, verb)?;
    if raw_filters.is_empty() {
        return Err(ParseError::BadFilter {
            sub_id,
            message: format!("invalid: {verb} needs at least one filter"),
        });
    }
    let mut filters = Vec::with_capacity(raw_filters.len());
    for raw in raw_filters {
        match Filter::from_json(raw.get()) {
            Ok(filter) => filters.push(filter),
            Err(err) => {
                return Err(ParseError::BadFilter {
                    sub_id,
                    message: format!("invalid: bad filter: {}", truncate(&err.to_string(), 120)),
                })
            }
        }
    }
    Ok((sub_id, filters))
}

fn parse_neg_open(args: &[&RawValue]) -> Result<ClientMessage, ParseError> {
    let Some((id, rest)) = args.split_first() else {
        return Err(ParseError::Notice(
            "invalid: NEG-OPEN needs a subscription id".to_owned(),
        ));
    };
    let sub_id = parse_sub_id(id, "NEG-OPEN")?;
    let [filter, message] = rest else {
        return Err(ParseError::BadNeg {
            sub_id,
            message: "invalid: NEG-OPEN takes a subscription id, one filter and a message"
                .to_owned(),
        });
    };
    let filter = match Filter::from_json(filter.get()) {
        Ok(filter) => filter,
        Err(err) => {
            return Err(ParseError::BadNeg {
                sub_id,
                message: format!("invalid: bad filter: {}", truncate(&err.to_string(), 120)),
            })
        }
    };
    let message = parse_hex_arg(message, &sub_id)?;
    Ok(ClientMessage::NegOpen {
        sub_id,
        filter: Box::new(filter),
        message,
    })
}

/// A negentropy message: a JSON string (decoded from hex by the session).
fn parse_hex_arg(raw: &RawValue, sub_id: &str) -> Result<String, ParseError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| ParseError::BadNeg {
        sub_id: sub_id.to_owned(),
        message: "invalid: the negentropy message must be a hex string".to_owned(),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Builders for relay → client messages, as JSON text. Stored events are
/// embedded as the JSON they were stored with, never re-serialized.
pub mod out {
    use serde_json::json;

    use crate::metrics::MESSAGES_SENT;

    /// Counts a message built for a client (see [`crate::metrics`]).
    fn sent(kind: &'static str) {
        metrics::counter!(MESSAGES_SENT, "type" => kind).increment(1);
    }

    fn quote(s: &str) -> String {
        serde_json::Value::from(s).to_string()
    }

    /// `["EVENT", sub, event]`
    pub fn event(sub_id: &str, event_json: &str) -> String {
        event_after(&event_prefix(sub_id), event_json)
    }

    /// `["EVENT",<sub id>,`: what every EVENT message of subscription
    /// `sub_id` starts with, built once per subscription so that a live
    /// delivery is one allocation and two copies ([`event_after`]).
    pub fn event_prefix(sub_id: &str) -> String {
        let sub = quote(sub_id);
        let mut s = String::with_capacity(sub.len() + 10);
        s.push_str("[\"EVENT\",");
        s.push_str(&sub);
        s.push(',');
        s
    }

    /// `["EVENT", sub, event]` from the subscription's [`event_prefix`].
    pub fn event_after(prefix: &str, event_json: &str) -> String {
        sent("EVENT");
        let mut s = String::with_capacity(prefix.len() + event_json.len() + 1);
        s.push_str(prefix);
        s.push_str(event_json);
        s.push(']');
        s
    }

    /// `["OK", id, accepted, message]` answering an EVENT (counted in
    /// `cairn_events_total` by result).
    pub fn ok(event_id: &str, accepted: bool, message: &str) -> String {
        sent("OK");
        crate::metrics::record_ok(accepted, message);
        json!(["OK", event_id, accepted, message]).to_string()
    }

    /// `["OK", id, accepted, message]` answering an AUTH (not counted with
    /// the EVENTs' results).
    pub fn auth_ok(event_id: &str, accepted: bool, message: &str) -> String {
        sent("OK");
        json!(["OK", event_id, accepted, message]).to_string()
    }

    /// `["EOSE", sub]`
    pub fn eose(sub_id: &str) -> String {
        sent("EOSE");
        json!(["EOSE", sub_id]).to_string()
    }

    /// `["CLOSED", sub, message]`
    pub fn closed(sub_id: &str, message: &str) -> String {
        sent("CLOSED");
        json!(["CLOSED", sub_id, message]).to_string()
    }

    /// `["NOTICE", message]`
    pub fn notice(message: &str) -> String {
        sent("NOTICE");
        json!(["NOTICE", message]).to_string()
    }

    /// `["AUTH", challenge]`
    pub fn auth(challenge: &str) -> String {
        sent("AUTH");
        json!(["AUTH", challenge]).to_string()
    }

    /// `["NEG-MSG", sub, hex message]` (NIP-77)
    pub fn neg_msg(sub_id: &str, message: &[u8]) -> String {
        sent("NEG-MSG");
        json!(["NEG-MSG", sub_id, hex::encode(message)]).to_string()
    }

    /// `["NEG-ERR", sub, reason]`, or `["NEG-ERR", sub, reason, max]` when
    /// the reason is a record limit (NIP-77).
    pub fn neg_err(sub_id: &str, reason: &str, max_records: Option<usize>) -> String {
        sent("NEG-ERR");
        match max_records {
            Some(max) => json!(["NEG-ERR", sub_id, reason, max]).to_string(),
            None => json!(["NEG-ERR", sub_id, reason]).to_string(),
        }
    }

    /// `["COUNT", sub, {"count": n}]`
    pub fn count(sub_id: &str, count: u64) -> String {
        sent("COUNT");
        json!(["COUNT", sub_id, {"count": count}]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_arrays_and_unknown_verbs() {
        assert!(matches!(
            ClientMessage::parse("{}"),
            Err(ParseError::Notice(_))
        ));
        assert!(matches!(
            ClientMessage::parse("[]"),
            Err(ParseError::Notice(_))
        ));
        assert!(matches!(
            ClientMessage::parse("[1]"),
            Err(ParseError::Notice(_))
        ));
        let err = ClientMessage::parse(r#"["HELLO"]"#).unwrap_err();
        assert_eq!(
            err,
            ParseError::Notice("invalid: unknown message type HELLO".into())
        );
    }

    #[test]
    fn bad_filter_is_closed_with_sub_id() {
        let err = ClientMessage::parse(r#"["REQ","s",{"kinds":"x"}]"#).unwrap_err();
        assert!(matches!(err, ParseError::BadFilter { ref sub_id, .. } if sub_id == "s"));
        let err = ClientMessage::parse(r#"["REQ","s"]"#).unwrap_err();
        assert!(matches!(err, ParseError::BadFilter { .. }));
    }

    #[test]
    fn malformed_event_with_id_gets_ok() {
        let id = "a".repeat(64);
        let err =
            ClientMessage::parse(&format!(r#"["EVENT",{{"id":"{id}","kind":"x"}}]"#)).unwrap_err();
        assert!(matches!(err, ParseError::BadEvent { id: ref got, .. } if *got == id));
    }

    #[test]
    fn parses_req_with_tags() {
        let msg =
            ClientMessage::parse(r##"["REQ","s",{"#t":["a"],"limit":3},{"kinds":[1]}]"##).unwrap();
        match msg {
            ClientMessage::Req { sub_id, filters } => {
                assert_eq!(sub_id, "s");
                assert_eq!(filters.len(), 2);
                assert_eq!(filters[0].limit, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_negentropy_messages() {
        let msg = ClientMessage::parse(r#"["NEG-OPEN","n",{"kinds":[1]},"6100"]"#).unwrap();
        assert!(
            matches!(msg, ClientMessage::NegOpen { ref sub_id, ref message, .. } if sub_id == "n" && message == "6100")
        );
        let msg = ClientMessage::parse(r#"["NEG-MSG","n","61"]"#).unwrap();
        assert!(matches!(msg, ClientMessage::NegMsg { ref message, .. } if message == "61"));
        let msg = ClientMessage::parse(r#"["NEG-CLOSE","n"]"#).unwrap();
        assert!(matches!(msg, ClientMessage::NegClose(ref id) if id == "n"));
        // The old 5-element form (with an id size) and bad filters get NEG-ERR.
        let err = ClientMessage::parse(r#"["NEG-OPEN","n",{},32,"61"]"#).unwrap_err();
        assert!(matches!(err, ParseError::BadNeg { ref sub_id, .. } if sub_id == "n"));
        let err = ClientMessage::parse(r#"["NEG-OPEN","n",{"kinds":"x"},"61"]"#).unwrap_err();
        assert!(matches!(err, ParseError::BadNeg { .. }));
        assert_eq!(
            out::neg_err("n", "blocked: x", Some(5)),
            r#"["NEG-ERR","n","blocked: x",5]"#
        );
        assert_eq!(out::neg_msg("n", &[0x61]), r#"["NEG-MSG","n","61"]"#);
    }

    #[test]
    fn event_message_escapes_sub_id() {
        assert_eq!(out::event("a\"b", "{}"), r#"["EVENT","a\"b",{}]"#);
        assert_eq!(
            out::event_after(&out::event_prefix("a\"b"), "{}"),
            out::event("a\"b", "{}")
        );
    }
}
