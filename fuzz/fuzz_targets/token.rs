//! Tokens: any `Authorization` header value through the bearer parser, and
//! any token through publish and subscribe authorisation with a fixed HS256
//! key. Claims built from the input and signed with the right key are read;
//! the same claims signed with another key, or with the signature changed,
//! never authorise anything.
//!
//! Input: a first line `<topic>`, then either `header <Authorization value>`
//! or `jwt right` / `jwt wrong` (the key it is signed with) followed by the
//! JWT header on one line and the payload (any bytes) after it.
#![no_main]

#[path = "../common/push.rs"]
mod push;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use sidestream_core::config::{SubscribeAuth, TopicSettings};
use sidestream_push::auth::{bearer, Auth};

enum Token<'a> {
    /// An `Authorization` header value as sent.
    Header(&'a str),
    /// A JWT with this header and payload, signed with the server's key or not.
    Signed {
        header: &'a [u8],
        payload: &'a [u8],
        right_key: bool,
    },
}

fn read(data: &[u8]) -> Option<(&str, Token<'_>)> {
    let (topic, rest) = split_line(data);
    let topic = std::str::from_utf8(topic).ok()?;
    let (mode, rest) = split_line(rest);
    let token = if let Some(value) = mode.strip_prefix(b"header ") {
        Token::Header(std::str::from_utf8(value).ok()?)
    } else {
        let (header, payload) = split_line(rest);
        Token::Signed {
            header,
            payload,
            right_key: mode != b"jwt wrong",
        }
    };
    Some((topic, token))
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((topic, token)) = read(data) else {
        return;
    };
    let auth = Auth::new(Some(push::JWT_SECRET), false);
    let mut settings = TopicSettings::defaults("fuzz");
    settings.publish_keys = vec![push::STATIC_KEY.to_owned()];
    settings.subscribe_auth = SubscribeAuth::Token;
    match token {
        Token::Header(value) => {
            let token = bearer(Some(value));
            if let Some(token) = token {
                assert!(!token.is_empty());
                assert!(value.contains(token));
            }
            let _ = auth.authorize_publish(topic, &settings, token);
            let _ = auth.authorize_subscribe(topic, &settings, token);
        }
        Token::Signed {
            header,
            payload,
            right_key,
        } => {
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let secret = if right_key {
                push::JWT_SECRET
            } else {
                "another-secret"
            };
            let key = EncodingKey::from_secret(secret.as_bytes());
            let Ok(signature) =
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            else {
                return;
            };
            let token = format!("{message}.{signature}");
            let publish = auth.authorize_publish(topic, &settings, Some(&token));
            let subscribe = auth.authorize_subscribe(topic, &settings, Some(&token));
            if !right_key {
                assert!(publish.is_err(), "another key's token may publish");
                assert!(subscribe.is_err(), "another key's token may subscribe");
            }
            // A changed signature never passes.
            let forged = format!("{message}.{}", flip(&signature));
            assert!(auth
                .authorize_publish(topic, &settings, Some(&forged))
                .is_err());
            assert!(auth
                .authorize_subscribe(topic, &settings, Some(&forged))
                .is_err());
        }
    }
});

/// The signature with its first character changed.
fn flip(signature: &str) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    if let Some(first) = chars.first_mut() {
        *first = if *first == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}
