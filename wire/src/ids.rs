//! Identifiers as newtypes, so a room id can never be passed where a user id
//! belongs, and every id that crosses the wire has been validated once.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted room or user id, in bytes (ids are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an id must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ - . :")]
pub struct InvalidId;

fn validate(s: &str) -> Result<(), InvalidId> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(InvalidId)
    }
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        /// Cheap to clone (shared), validated on construction.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Result<Self, InvalidId> {
                validate(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[A-Za-z0-9_.:-]{1,64}$"))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }
    };
}

string_id!(
    /// One broadcast: a room is created per show.
    RoomId
);
string_id!(
    /// A person (or a guest session) as named by a token's `sub` claim.
    UserId
);
string_id!(
    /// A stock-keeping unit: one variant of a product (size, colour),
    /// unique within its room. Chosen by the merchant, e.g. `TEE-RED-M`.
    Sku
);
string_id!(
    /// A buyer's idempotency key: the same key for the same buy returns the
    /// same order, however often it is retried.
    IdemKey
);

/// Position of an event in its room's ordered stream. Starts at 1; 0 means
/// "nothing yet".
pub type Seq = u64;

macro_rules! number_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(0))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

number_id!(
    /// A poll or quiz, unique within its room.
    PollId
);
number_id!(
    /// A question in the room's Q&A, unique within its room.
    QuestionId
);
number_id!(
    /// A product in the catalog, unique on this node's store.
    ProductId
);
number_id!(
    /// A flash sale, unique on this node's store.
    SaleId
);
number_id!(
    /// A coupon drop, unique on this node's store.
    CouponId
);
number_id!(
    /// An order, unique on this node's store.
    OrderId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(RoomId::new("demo").is_ok());
        assert!(RoomId::new("show-2026.11_a:b").is_ok());
        assert!(RoomId::new("").is_err());
        assert!(RoomId::new("has space").is_err());
        assert!(RoomId::new(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(UserId::new("ünïcode").is_err());
    }

    #[test]
    fn deserializing_validates() {
        let ok: Result<RoomId, _> = serde_json::from_str("\"demo\"");
        assert!(ok.is_ok());
        let bad: Result<RoomId, _> = serde_json::from_str("\"../etc\"");
        assert!(bad.is_err());
    }
}
