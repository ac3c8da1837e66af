//! Who may publish and subscribe.
//!
//! Publishing needs a bearer token unless the server runs with open publishing
//! (the default when the HTTP listener is bound to loopback): a static key of
//! the topic (`publishKeys` in its settings) or an HS256 JWT signed with
//! `--jwt-secret` whose `publish` claim covers the topic. Subscribing to a
//! topic whose settings say `subscribeAuth: token` needs a JWT whose
//! `subscribe` claim covers it. Claims list topic patterns: a name, `prefix*`,
//! or `*`. `exp` is required.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sidestream_core::config::{SubscribeAuth, TopicSettings};
use subtle::ConstantTimeEq as _;

use crate::error::PushError;

/// The claims sidestream reads from a JWT.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// Token checks for one server.
#[derive(Clone)]
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
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
        validation.leeway = 5;
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            publish_open,
        }
    }

    pub fn publish_open(&self) -> bool {
        self.publish_open
    }

    fn claims(&self, token: &str) -> Result<Claims, PushError> {
        let Some(key) = &self.key else {
            return Err(PushError::Unauthorized(
                "the token is not a publish key of this topic and this server accepts no JWTs"
                    .into(),
            ));
        };
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
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

    /// May the bearer of `token` subscribe to `topic`?
    pub fn authorize_subscribe(
        &self,
        topic: &str,
        settings: &TopicSettings,
        token: Option<&str>,
    ) -> Result<(), PushError> {
        if settings.subscribe_auth == SubscribeAuth::None {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(PushError::Unauthorized(format!(
                "topic '{topic}' needs a subscription token"
            )));
        };
        let claims = self.claims(token)?;
        if covers(&claims.subscribe, topic) {
            Ok(())
        } else {
            Err(PushError::Forbidden(format!(
                "the token does not allow subscribing to topic '{topic}'"
            )))
        }
    }
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
