//! Payment confirmation: the payment provider calls a webhook when a buyer
//! paid. The request is signed so nobody else can mark an order paid:
//!
//! `Flashcast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the
//! HMAC key is the webhook secret and the signed message is `<t>.<raw body>`.
//! Several `v1=` entries may be sent (for secret rotation); one must match.
//! A timestamp more than the tolerance away from now is refused, and every
//! event id is remembered for that long (and durably, forever), so a
//! captured request cannot be replayed.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::CommerceError;
use flashcast_wire::ids::OrderId;
use flashcast_wire::money::Money;
use flashcast_wire::ErrorCode;

pub const SIGNATURE_HEADER: &str = "flashcast-signature";

/// Longest accepted event id.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// The webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentEvent {
    /// The provider's unique id for this event.
    pub event_id: String,
    pub order_id: OrderId,
    /// What was paid; must equal the order total.
    pub amount: Money,
}

type HmacSha256 = Hmac<Sha256>;

/// The signature header value for `body` at `t` (unix seconds): what a
/// provider (or a test) sends.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &[u8], t: u64, body: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

fn bad(message: &str) -> CommerceError {
    CommerceError::new(ErrorCode::BadSignature, message)
}

/// Checks the header against the body; `now` and `tolerance` in seconds.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<(), CommerceError> {
    let header = header.ok_or_else(|| bad("missing Flashcast-Signature header"))?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| bad("v1 is not hex"))?),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad("the signature header has no valid t="))?;
    if sigs.is_empty() {
        return Err(bad("the signature header has no v1="));
    }
    if t.abs_diff(now) > tolerance {
        return Err(bad("the signature timestamp is outside the tolerance"));
    }
    let expected = mac(secret, t, body);
    // Constant-time comparison via the Mac's own verify.
    let ok = sigs.iter().any(|sig| {
        let mut m = HmacSha256::new_from_slice(secret).expect("any key length");
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        sig.len() == expected.len() && m.verify_slice(sig).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(bad("the signature does not match"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_body_verifies_and_anything_else_does_not() {
        let secret = b"whsec";
        let body = br#"{"event_id":"e1"}"#;
        let header = sign(secret, 1_000, body);
        assert!(verify(secret, Some(&header), body, 1_010, 300).is_ok());
        // Another body, another secret, a stale or future timestamp, junk.
        let code = |r: Result<(), CommerceError>| r.unwrap_err().code;
        assert_eq!(
            code(verify(secret, Some(&header), b"{}", 1_010, 300)),
            ErrorCode::BadSignature
        );
        assert!(verify(b"other", Some(&header), body, 1_010, 300).is_err());
        assert!(verify(secret, Some(&header), body, 1_301, 300).is_err());
        assert!(verify(secret, Some(&header), body, 699, 300).is_err());
        assert!(verify(secret, None, body, 1_000, 300).is_err());
        assert!(verify(secret, Some("t=1000"), body, 1_000, 300).is_err());
        assert!(verify(secret, Some("v1=zz,t=1000"), body, 1_000, 300).is_err());
        // Rotation: one of several signatures matching is enough.
        let rotated = format!("{},v1={}", header, "00".repeat(32));
        assert!(verify(secret, Some(&rotated), body, 1_000, 300).is_ok());
    }
}
