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

/// Tenant-controlled text (tags, policy messages, guest output) made safe for terminals
/// and logs: control characters (escape sequences, newlines) are shown as `\u{..}`.
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Tags the host sets itself; neither a tenant nor a policy may set them.
pub const RESERVED_TAGS: &[&str] = &["schedule", "protection-policy"];

#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("tag '{0}' is reserved: couchvault sets it itself")]
    Reserved(String),
    #[error("tag '{0}': keys are 1-128 bytes, values at most 1024")]
    Size(String),
    #[error("tag '{0}' holds control characters")]
    Control(String),
}

/// Checks tags a tenant or a policy gives: not reserved, no control characters, bounded.
pub fn validate_tags<'a>(
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), TagError> {
    for (k, v) in tags {
        let key = || escape_control(k).into_owned();
        if RESERVED_TAGS.contains(&k.as_str()) || k.starts_with("couchvault") {
            return Err(TagError::Reserved(key()));
        }
        if k.is_empty() || k.len() > 128 || v.len() > 1024 {
            return Err(TagError::Size(key()));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(TagError::Control(key()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{escape_control, validate_name};

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("plain"), "plain");
        assert_eq!(
            escape_control("a\x1b]0;x\x07\nb"),
            "a\\u{1b}]0;x\\u{7}\\u{a}b"
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("tenant", "default").is_ok());
        assert!(validate_name("instance", "prod-1.eu_west").is_ok());
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name("tenant", bad).is_err(), "{bad}");
        }
    }
}
