//! Who may publish and subscribe.
//!
//! Publishing needs a bearer token unless the server runs with open publishing
//! (the default when the HTTP listener is bound to loopback): a static key of
//! the topic (`publishKeys` in its settings) or an HS256 JWT signed with
//! `--jwt-secret` whose `publish` claim covers the topic. Subscribing to a
//! topic whose settings say `subscribeAuth: token` needs a JWT whose
//! `subscribe` claim covers it. Claims list topic patterns: a name, `prefix*`,
//! or `*`. `exp` is required.
//!
//! A subscription token is good until `exp` plus [`EXP_LEEWAY`], at open and
//! on the stream it opened (see [`crate::session`]); its subject (`sub`) or
//! id (`jti`) may be refused by the topic's `revokedSubjects` /
//! `revokedTokenIds`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sidestream_core::config::{SubscribeAuth, TopicSettings};
use subtle::ConstantTimeEq as _;

use crate::error::PushError;

/// Leeway on `exp` for clock skew between the token's issuer and this server.
pub const EXP_LEEWAY: Duration = Duration::from_secs(5);

/// The claims sidestream reads from a JWT.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
    /// Expiry, Unix seconds (required).
    pub exp: u64,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// What a subscription token grants a stream for one topic: who, which
/// token, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub sub: Option<String>,
    pub jti: Option<String>,
    /// The token's `exp`, Unix seconds.
    pub exp: u64,
}

impl Grant {
    /// When the token stops being good (`exp` + [`EXP_LEEWAY`]), Unix nanoseconds.
    pub fn end_unix_nanos(&self) -> u64 {
        self.exp
            .saturating_add(EXP_LEEWAY.as_secs())
            .saturating_mul(1_000_000_000)
    }
}

/// Token checks for one server.
#[derive(Clone)]
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
    /// Subscription tokens: `exp` checked here, to the nanosecond, against
    /// the same end the stream is held to.
    subscribe_validation: Validation,
    publish_open: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("jwt", &self.key.is_some())
            .field("publish_open", &self.publish_open)
            .finish()
    }
}

impl Auth {
    /// `secret`: the HS256 key for JWTs (none: only static publish keys work).
    /// `publish_open`: publishing without a token is allowed.
    pub fn new(secret: Option<&str>, publish_open: bool) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = EXP_LEEWAY.as_secs();
        let mut subscribe_validation = validation.clone();
        subscribe_validation.validate_exp = false;
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            subscribe_validation,
            publish_open,
        }
    }

    pub fn publish_open(&self) -> bool {
        self.publish_open
    }

    fn claims(&self, token: &str) -> Result<Claims, PushError> {
        self.decode(token, &self.validation)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, PushError> {
        let Some(key) = &self.key else {
            return Err(PushError::Unauthorized(
                "the token is not a publish key of this topic and this server accepts no JWTs"
                    .into(),
            ));
        };
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|error| PushError::Unauthorized(format!("invalid token: {error}")))
    }

    /// May the bearer of `token` publish to `topic`?
    pub fn authorize_publish(
        &self,
        topic: &str,
        settings: &TopicSettings,
        token: Option<&str>,
    ) -> Result<(), PushError> {
        let Some(token) = token else {
            if self.publish_open {
                return Ok(());
            }
            return Err(PushError::Unauthorized(
                "publishing needs a bearer token (a publish key of the topic or a JWT)".into(),
            ));
        };
        if settings
            .publish_keys
            .iter()
            .any(|key| constant_time_eq(key.as_bytes(), token.as_bytes()))
        {
            return Ok(());
        }
        let claims = self.claims(token)?;
        if covers(&claims.publish, topic) {
            Ok(())
        } else {
            Err(PushError::Forbidden(format!(
                "the token does not allow publishing to topic '{topic}'"
            )))
        }
    }

    /// May the bearer of `token` subscribe to `topic`? The grant to hold
    /// the topic under, for a topic that needs a token (`None`: it does not).
    pub fn authorize_subscribe(
        &self,
        topic: &str,
        settings: &TopicSettings,
        token: Option<&str>,
    ) -> Result<Option<Grant>, PushError> {
        self.authorize_subscribe_at(topic, settings, token, crate::message::unix_nanos())
    }

    /// Checks a subscription token's signature and expiry, whatever topic it
    /// is for (a WebSocket `refresh` on a socket with no topic that needs one).
    pub fn check_subscription_token(&self, token: &str) -> Result<Grant, PushError> {
        self.subscription_token(token, crate::message::unix_nanos())
            .map(|(grant, _)| grant)
    }

    fn subscription_token(
        &self,
        token: &str,
        now_unix_nanos: u64,
    ) -> Result<(Grant, Claims), PushError> {
        let claims = self.decode(token, &self.subscribe_validation)?;
        let grant = Grant {
            sub: claims.sub.clone(),
            jti: claims.jti.clone(),
            exp: claims.exp,
        };
        let end = grant.end_unix_nanos();
        if now_unix_nanos >= end {
            let ago = (now_unix_nanos - end) / 1_000_000_000 + EXP_LEEWAY.as_secs();
            return Err(PushError::Unauthorized(format!(
                "the subscription token expired (exp {}, {ago} s ago); subscribe with a fresh token",
                grant.exp
            )));
        }
        Ok((grant, claims))
    }

    /// [`Auth::authorize_subscribe`] at `now` (Unix nanoseconds).
    pub fn authorize_subscribe_at(
        &self,
        topic: &str,
        settings: &TopicSettings,
        token: Option<&str>,
        now_unix_nanos: u64,
    ) -> Result<Option<Grant>, PushError> {
        if settings.subscribe_auth == SubscribeAuth::None {
            return Ok(None);
        }
        let Some(token) = token else {
            return Err(PushError::Unauthorized(format!(
                "topic '{topic}' needs a subscription token"
            )));
        };
        let (grant, claims) = self.subscription_token(token, now_unix_nanos)?;
        if !covers(&claims.subscribe, topic) {
            return Err(PushError::Forbidden(format!(
                "the token does not allow subscribing to topic '{topic}'"
            )));
        }
        if let Some(revoked) = revocation(topic, settings, &grant) {
            return Err(PushError::Unauthorized(revoked));
        }
        Ok(Some(grant))
    }
}

/// Why `settings` refuse `grant`, if they do (a message naming the list).
pub fn revocation(topic: &str, settings: &TopicSettings, grant: &Grant) -> Option<String> {
    let revoked = settings.revokes(grant.sub.as_deref(), grant.jti.as_deref())?;
    let (claim, value) = match revoked {
        sidestream_core::config::Revoked::Subject => ("sub", grant.sub.as_deref()),
        sidestream_core::config::Revoked::TokenId => ("jti", grant.jti.as_deref()),
    };
    Some(format!(
        "the subscription token was revoked: its {claim} '{}' is in topic '{topic}''s {}",
        value.unwrap_or_default(),
        revoked.field()
    ))
}

/// Whether one of `patterns` (`name`, `prefix*`, `*`) covers `topic`.
pub fn covers(patterns: &[String], topic: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => pattern == topic,
        })
}

/// Compares a key with a presented token in time independent of where they
/// differ (only their lengths may tell).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn exp() -> u64 {
        crate::message::unix_nanos() / 1_000_000_000 + 600
    }

    #[test]
    fn publish_rules() {
        let auth = Auth::new(Some("s3cret"), false);
        let mut settings = TopicSettings::defaults("prices");
        settings.publish_keys = vec!["static-key-0123456789".into()];
        let unauthorized = |r: Result<(), PushError>| matches!(r, Err(PushError::Unauthorized(_)));
        let forbidden = |r: Result<(), PushError>| matches!(r, Err(PushError::Forbidden(_)));
        assert!(unauthorized(
            auth.authorize_publish("prices", &settings, None)
        ));
        assert!(auth
            .authorize_publish("prices", &settings, Some("static-key-0123456789"))
            .is_ok());
        assert!(unauthorized(auth.authorize_publish(
            "prices",
            &settings,
            Some("static-key-0123456780")
        )));
        let good = token(
            "s3cret",
            serde_json::json!({ "exp": exp(), "publish": ["pri*"] }),
        );
        assert!(auth
            .authorize_publish("prices", &settings, Some(&good))
            .is_ok());
        assert!(forbidden(auth.authorize_publish(
            "news",
            &settings,
            Some(&good)
        )));
        let wrong_key = token(
            "other",
            serde_json::json!({ "exp": exp(), "publish": ["*"] }),
        );
        assert!(unauthorized(auth.authorize_publish(
            "prices",
            &settings,
            Some(&wrong_key)
        )));
        let expired = token(
            "s3cret",
            serde_json::json!({ "exp": 1000, "publish": ["*"] }),
        );
        assert!(unauthorized(auth.authorize_publish(
            "prices",
            &settings,
            Some(&expired)
        )));
        assert!(Auth::new(None, true)
            .authorize_publish("prices", &settings, None)
            .is_ok());
    }

    #[test]
    fn subscribe_rules() {
        let auth = Auth::new(Some("s3cret"), true);
        let mut settings = TopicSettings::defaults("private");
        assert!(auth.authorize_subscribe("private", &settings, None).is_ok());
        settings.subscribe_auth = SubscribeAuth::Token;
        assert!(matches!(
            auth.authorize_subscribe("private", &settings, None),
            Err(PushError::Unauthorized(_))
        ));
        let good = token(
            "s3cret",
            serde_json::json!({ "exp": exp(), "subscribe": ["private"] }),
        );
        assert!(auth
            .authorize_subscribe("private", &settings, Some(&good))
            .is_ok());
        let publish_only = token(
            "s3cret",
            serde_json::json!({ "exp": exp(), "publish": ["private"] }),
        );
        assert!(matches!(
            auth.authorize_subscribe("private", &settings, Some(&publish_only)),
            Err(PushError::Forbidden(_))
        ));
    }

    #[test]
    fn subscription_tokens_end_at_exp_plus_the_leeway_and_can_be_revoked() {
        let auth = Auth::new(Some("s3cret"), true);
        let mut settings = TopicSettings::defaults("private");
        settings.subscribe_auth = SubscribeAuth::Token;
        let alice = token(
            "s3cret",
            serde_json::json!({ "exp": 1000, "sub": "alice", "jti": "j-1", "subscribe": ["private"] }),
        );
        let at = |secs: u64| secs * 1_000_000_000;
        assert_eq!(
            auth.authorize_subscribe_at("private", &settings, Some(&alice), at(1004))
                .unwrap(),
            Some(Grant {
                sub: Some("alice".into()),
                jti: Some("j-1".into()),
                exp: 1000
            })
        );
        let message = |r: Result<Option<Grant>, PushError>| match r {
            Err(PushError::Unauthorized(message)) => message,
            other => panic!("not a 401: {other:?}"),
        };
        assert_eq!(
            message(auth.authorize_subscribe_at("private", &settings, Some(&alice), at(1005))),
            "the subscription token expired (exp 1000, 5 s ago); subscribe with a fresh token"
        );
        // Open topics take no token, so none is held.
        assert_eq!(
            auth.authorize_subscribe_at(
                "open",
                &TopicSettings::defaults("open"),
                Some(&alice),
                at(2000)
            )
            .unwrap(),
            None
        );
        settings.revoked_token_ids.insert("j-1".into());
        assert_eq!(
            message(auth.authorize_subscribe_at("private", &settings, Some(&alice), at(1000))),
            "the subscription token was revoked: its jti 'j-1' is in topic 'private''s revokedTokenIds"
        );
        settings.revoked_subjects.insert("alice".into());
        assert_eq!(
            message(auth.authorize_subscribe_at("private", &settings, Some(&alice), at(1000))),
            "the subscription token was revoked: its sub 'alice' is in topic 'private''s revokedSubjects"
        );
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
