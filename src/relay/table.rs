//! The outbox table's name: the one piece of user input that reaches SQL text (identifiers
//! cannot be bound as parameters), so it is checked once here and every query is built from a
//! [`TableName`] only.

use std::fmt;
use std::str::FromStr;

/// Longest accepted name: PostgreSQL cuts identifiers at 63 bytes, and the schema adds
/// `_published` and `_notify` to it for its index, function and trigger names.
pub const MAX_LEN: usize = 48;

/// The default outbox table.
pub const DEFAULT_TABLE: &str = "courier_outbox";

/// A validated table name: 1 to [`MAX_LEN`] lower-case ASCII letters, digits and underscores,
/// not starting with a digit. Safe to put between double quotes in SQL text, and usable as a
/// `LISTEN` channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

/// Why a table name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid outbox table name: {why} (use 1-{MAX_LEN} lower-case letters, digits and underscores, not starting with a digit, e.g. {DEFAULT_TABLE})")]
pub struct InvalidTableName {
    /// The refused input.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for TableName {
    type Err = InvalidTableName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = |why| {
            Err(InvalidTableName {
                name: s.to_owned(),
                why,
            })
        };
        if s.is_empty() {
            return refuse("it is empty");
        }
        if s.len() > MAX_LEN {
            return refuse("it is too long");
        }
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            return refuse("it starts with a digit");
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return refuse("it holds a character other than a-z, 0-9 and _");
        }
        Ok(Self(s.to_owned()))
    }
}

impl TableName {
    /// The bare name (also the `LISTEN` channel and the key in `courier_migrations`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL text.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// `template` with every `{table}` replaced by the name (the migrations' placeholder).
    pub fn fill(&self, template: &str) -> String {
        template.replace("{table}", &self.0)
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self(DEFAULT_TABLE.to_owned())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers_are_accepted() {
        for ok in [
            "courier_outbox",
            "_x",
            "orders_outbox_2",
            &"a".repeat(MAX_LEN),
        ] {
            let t: TableName = ok.parse().expect(ok);
            assert_eq!(t.as_str(), ok);
            assert_eq!(t.quoted(), format!("\"{ok}\""));
        }
    }

    #[test]
    fn anything_that_could_escape_the_quotes_is_refused() {
        for bad in [
            "",
            "1outbox",
            "Outbox",
            "out box",
            "outbox\"; drop table users; --",
            "public.outbox",
            "outbox-1",
            "é",
            &"a".repeat(MAX_LEN + 1),
        ] {
            let e = bad.parse::<TableName>().expect_err(bad);
            assert!(
                e.to_string().contains("not a valid outbox table name"),
                "{e}"
            );
        }
    }

    #[test]
    fn fill_replaces_every_placeholder() {
        let t: TableName = "o".parse().expect("valid");
        assert_eq!(t.fill("{table} {table}_x"), "o o_x");
    }
}
