//! Keys as the command line writes them: JSON text, or a bare word taken as
//! a JSON string.
//!
//! The rule: an argument that parses as JSON is sent as is (`'"alice"'`,
//! `42`, `'[1,"a"]'`); otherwise, unless it starts like JSON (`"`, `{`,
//! `[`), it is quoted as a JSON string (`alice` is `"alice"`). So the
//! string key `42` must be written `'"42"'`, and `'{nope'` is an error, not
//! the string `{nope`.

/// Turns a KEY argument into JSON text per the rule above.
pub fn key_json(arg: &str) -> Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(arg) {
        Ok(v) => Ok(v.to_string()),
        Err(e) if arg.trim_start().starts_with(['"', '{', '[']) => Err(format!(
            "`{arg}` starts like JSON but is not valid JSON ({e}); \
             quote a string key as JSON, e.g. '\"alice\"'"
        )),
        Err(_) => Ok(serde_json::Value::String(arg.to_string()).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::key_json;

    #[test]
    fn the_rule() {
        assert_eq!(key_json(r#""alice""#).unwrap(), r#""alice""#);
        assert_eq!(key_json("alice").unwrap(), r#""alice""#);
        assert_eq!(key_json("customer-07").unwrap(), r#""customer-07""#);
        assert_eq!(key_json("42").unwrap(), "42");
        assert_eq!(key_json(r#""42""#).unwrap(), r#""42""#);
        assert_eq!(key_json(r#"[1, "a"]"#).unwrap(), r#"[1,"a"]"#);
        assert_eq!(key_json("a b\"c").unwrap(), r#""a b\"c""#);
        assert!(key_json("{nope").is_err());
        assert!(key_json(r#""open"#).is_err());
    }
}
