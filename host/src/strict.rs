//! Unknown fields are refused even beside a `#[serde(flatten)]` (where serde's
//! `deny_unknown_fields` does not work): put `NoOtherFields` last, flattened, and whatever
//! no field before it took is an error naming the field.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoOtherFields;

impl NoOtherFields {
    /// For `skip_serializing_if`: there is never anything to write.
    pub fn skip(&self) -> bool {
        true
    }
}

impl serde::Serialize for NoOtherFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for NoOtherFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl<'de> Visitor<'de> for Refuse {
            type Value = NoOtherFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("no other fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoOtherFields, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::custom(format!("unknown field `{key}`"))),
                    None => Ok(NoOtherFields),
                }
            }
        }
        d.deserialize_map(Refuse)
    }
}

/// In the API's schema: nothing (an empty object, merged into the type that flattens it).
impl utoipa::PartialSchema for NoOtherFields {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new().into()
    }
}

impl utoipa::ToSchema for NoOtherFields {}
