//! Names that become parts of object paths: tenants, instances and backup ids.

#[derive(Debug, thiserror::Error)]
#[error("invalid {what} name '{name}': use 1-64 characters from a-z A-Z 0-9 . _ -, starting with a letter or digit")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
}

/// Accepts names safe as a single path component in every store.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names() {
        assert!(validate_name("tenant", "default").is_ok());
        assert!(validate_name("instance", "prod-1.eu_west").is_ok());
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name("tenant", bad).is_err(), "{bad}");
        }
    }
}
