//! Signed tokens (HS256 JWT) that say who a connection is, what it may do and
//! in which room; and the admin key that guards the REST admin API.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::{Role, UserRef};

use crate::clock::Clock;

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// The claims of a Flashcast token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub name: String,
    pub role: Role,
    pub room: RoomId,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    validation: Arc<Validation>,
    /// Expiry is checked against this clock, not jsonwebtoken's own.
    clock: Clock,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `verify` checks `exp` itself, on `clock`.
        validation.validate_exp = false;
        Self {
            encoding: Arc::new(EncodingKey::from_secret(secret)),
            decoding: Arc::new(DecodingKey::from_secret(secret)),
            validation: Arc::new(validation),
            clock: Clock::system(),
        }
    }

    /// Mints and checks expiry on `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Mints a token valid for `ttl_secs` from now.
    pub fn mint(
        &self,
        user: &UserId,
        name: &str,
        role: Role,
        room: &RoomId,
        ttl_secs: u64,
    ) -> (String, Claims) {
        let now = self.clock.now_secs();
        let claims = Claims {
            sub: user.clone(),
            name: name.to_string(),
            role,
            room: room.clone(),
            exp: now + ttl_secs,
            iat: now,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with a valid key cannot fail");
        (token, claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => {
                if data.claims.name.chars().count() > MAX_NAME_CHARS {
                    return Err(TokenError::Invalid);
                }
                // As jsonwebtoken with no leeway: valid through its `exp` second.
                if data.claims.exp < self.clock.now_secs() {
                    return Err(TokenError::Expired);
                }
                Ok(data.claims)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

impl Claims {
    pub fn user_ref(&self) -> UserRef {
        UserRef {
            id: self.sub.clone(),
            name: Arc::from(self.name.as_str()),
            role: self.role,
        }
    }
}

/// Compares secrets in constant time, so the admin key cannot be guessed a
/// byte at a time from response timings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random secret, hex encoded.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_reject() {
        let keys = TokenKeys::new(b"secret-one");
        let room = RoomId::new("r1").unwrap();
        let user = UserId::new("alice").unwrap();
        let (token, _) = keys.mint(&user, "Alice", Role::Host, &room, 60);
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.role, Role::Host);
        assert_eq!(claims.room, room);

        let other = TokenKeys::new(b"secret-two");
        assert_eq!(other.verify(&token).unwrap_err(), TokenError::Invalid);
        assert_eq!(keys.verify("not.a.jwt").unwrap_err(), TokenError::Invalid);

        let manual = crate::clock::ManualClock::frozen(1_000_000_000_000);
        let keys = keys.with_clock(manual.clock());
        let (expiring, _) = keys.mint(&user, "Alice", Role::Host, &room, 1);
        assert!(keys.verify(&expiring).is_ok());
        manual.advance(std::time::Duration::from_millis(1_999));
        assert!(
            keys.verify(&expiring).is_ok(),
            "valid through its exp second"
        );
        manual.advance(std::time::Duration::from_millis(1_000));
        assert_eq!(keys.verify(&expiring).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
