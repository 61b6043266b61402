//! Money in integer minor units (cents, won, yen) with its ISO 4217 currency.
//! No floats anywhere a price is computed; every sum is checked.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// An ISO 4217 code: three upper-case ASCII letters, e.g. `USD`, `KRW`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a currency is three upper-case letters (ISO 4217), e.g. USD")]
pub struct InvalidCurrency;

impl Currency {
    pub fn new(code: &str) -> Result<Self, InvalidCurrency> {
        let b = code.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(InvalidCurrency)
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::new(&s).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z]{3}$"))
            .description(Some("ISO 4217 currency code"))
            .into()
    }
}
impl utoipa::ToSchema for Currency {}

/// An amount of money: integer minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Minor units (cents for USD, won for KRW).
    pub minor: u64,
    pub currency: Currency,
}

/// Largest amount accepted anywhere (a price, a total, a discount): keeps
/// every product of a price and a quantity far from overflow, and exact as a
/// JSON number.
pub const MAX_MINOR: u64 = 1 << 50;

impl Money {
    pub fn new(minor: u64, currency: Currency) -> Self {
        assert!(minor <= MAX_MINOR, "amount out of range");
        Self { minor, currency }
    }

    /// `self` times `qty`, or None if it leaves the accepted range.
    pub fn times(self, qty: u32) -> Option<Money> {
        self.minor
            .checked_mul(u64::from(qty))
            .filter(|m| *m <= MAX_MINOR)
            .map(|minor| Money { minor, ..self })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_validated() {
        assert_eq!(Currency::new("KRW").unwrap().as_str(), "KRW");
        for bad in ["", "usd", "US", "USDT", "U$D", "ÜSD"] {
            assert!(Currency::new(bad).is_err(), "{bad}");
        }
        let m: Money = serde_json::from_str(r#"{"minor": 1999, "currency": "USD"}"#).unwrap();
        assert_eq!(m.minor, 1999);
        assert!(serde_json::from_str::<Money>(r#"{"minor": 1, "currency": "usd"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"minor": -1, "currency": "USD"}"#).is_err());
    }

    #[test]
    fn products_stay_in_range() {
        let usd = Currency::new("USD").unwrap();
        assert_eq!(Money::new(250, usd).times(4), Some(Money::new(1000, usd)));
        assert_eq!(Money::new(MAX_MINOR, usd).times(2), None);
    }
}
