//! The catalog: products and their variants (SKUs). A product belongs to a
//! room; its variants carry the regular price the sale price is compared to.

use serde::{Deserialize, Serialize};

use super::CommerceError;
use flashcast_wire::commerce::{Product, Variant};
use flashcast_wire::ids::{ProductId, RoomId};
use flashcast_wire::money::{Currency, MAX_MINOR};

/// Bounds of one product, checked on every create and edit.
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 5_000;
pub const MAX_IMAGES: usize = 10;
pub const MAX_IMAGE_URL_CHARS: usize = 2_000;
pub const MAX_VARIANTS: usize = 50;
pub const MAX_OPTIONS: usize = 5;
pub const MAX_OPTION_CHARS: usize = 50;

/// What an admin sends to create or replace a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductSpec {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Image URLs (http or https).
    #[serde(default)]
    pub images: Vec<String>,
    pub currency: Currency,
    pub variants: Vec<Variant>,
}

fn chars_between(field: &str, s: &str, min: usize, max: usize) -> Result<(), CommerceError> {
    let n = s.chars().count();
    if n < min || n > max || s.chars().any(char::is_control) {
        return Err(CommerceError::invalid(format!(
            "{field} must be {min}-{max} characters without control characters"
        )));
    }
    Ok(())
}

impl ProductSpec {
    /// Checks every bound; trims the title.
    pub fn validate(mut self) -> Result<ProductSpec, CommerceError> {
        self.title = self.title.trim().to_string();
        chars_between("title", &self.title, 1, MAX_TITLE_CHARS)?;
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(CommerceError::invalid(format!(
                "description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
        if self.images.len() > MAX_IMAGES {
            return Err(CommerceError::invalid(format!(
                "at most {MAX_IMAGES} images"
            )));
        }
        for url in &self.images {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || url.len() > MAX_IMAGE_URL_CHARS || url.chars().any(char::is_whitespace)
            {
                return Err(CommerceError::invalid(format!(
                    "images must be http(s) URLs of at most {MAX_IMAGE_URL_CHARS} characters"
                )));
            }
        }
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return Err(CommerceError::invalid(format!(
                "a product has 1-{MAX_VARIANTS} variants"
            )));
        }
        let mut skus = std::collections::HashSet::new();
        for v in &self.variants {
            if !skus.insert(v.sku.clone()) {
                return Err(CommerceError::invalid(format!(
                    "sku {} appears twice",
                    v.sku
                )));
            }
            if v.price_minor > MAX_MINOR {
                return Err(CommerceError::invalid("price_minor is out of range"));
            }
            if v.options.len() > MAX_OPTIONS {
                return Err(CommerceError::invalid(format!(
                    "a variant has at most {MAX_OPTIONS} options"
                )));
            }
            for (k, val) in &v.options {
                chars_between("option name", k, 1, MAX_OPTION_CHARS)?;
                chars_between("option value", val, 1, MAX_OPTION_CHARS)?;
            }
        }
        Ok(self)
    }

    pub fn into_product(self, id: ProductId, room: RoomId) -> Product {
        Product {
            id,
            room,
            title: self.title,
            description: self.description,
            images: self.images,
            currency: self.currency,
            variants: self.variants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcast_wire::ids::Sku;

    fn spec() -> ProductSpec {
        serde_json::from_value(serde_json::json!({
            "title": " Linen shirt ",
            "currency": "KRW",
            "images": ["https://cdn.example/shirt.jpg"],
            "variants": [
                {"sku": "SHIRT-M", "options": {"size": "M"}, "price_minor": 39000},
                {"sku": "SHIRT-L", "options": {"size": "L"}, "price_minor": 39000}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_product_passes_and_is_trimmed() {
        let p = spec().validate().unwrap();
        assert_eq!(p.title, "Linen shirt");
        let product = p.into_product(ProductId(1), RoomId::new("r").unwrap());
        let v = product.variant(&Sku::new("SHIRT-L").unwrap()).unwrap();
        assert_eq!(product.label(v), "Linen shirt (L)");
        assert_eq!(product.price_of(v).minor, 39000);
    }

    #[test]
    fn bounds_are_enforced() {
        let mut s = spec();
        s.variants.push(s.variants[0].clone());
        assert!(s.validate().unwrap_err().message.contains("twice"));
        let mut s = spec();
        s.variants.clear();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.images = vec!["javascript:alert(1)".into()];
        assert!(s.validate().is_err());
        let mut s = spec();
        s.title = "  ".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.variants[0].price_minor = MAX_MINOR + 1;
        assert!(s.validate().is_err());
        let unknown = serde_json::from_value::<ProductSpec>(serde_json::json!({
            "title": "x", "currency": "USD", "variants": [], "price": 1
        }));
        assert!(unknown.is_err(), "unknown fields are refused");
    }
}
