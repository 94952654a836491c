//! Bearer-token access control.
//!
//! Tokens come from the `TWILL_TOKENS` secret (or var): a JSON array of
//! `{"token": "...", "access": "write" | "read", "databases": ["name", ...]}` (`databases`
//! optional: all databases if absent). No endpoint answers without a valid token, unless
//! anonymous access was asked for explicitly (see `settings.rs`). Read tokens may only run
//! statements that read. Tokens are compared by digest, in constant time and without
//! revealing their length, and no error ever echoes what was sent.

use engine_core::guard::{check_statement, StatementKind};
use engine_core::Statement;
use sha2::{Digest, Sha256};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::settings::AccessRules;
use crate::wire::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

/// One entry of `TWILL_TOKENS`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRule {
    token: String,
    access: Access,
    #[serde(default)]
    databases: Option<Vec<String>>,
}

/// A token rule as the isolate keeps it: the token's SHA-256 digest rather than the token,
/// so a request hashes only the token it sends, once, whatever the number of rules.
#[derive(Debug, Clone)]
pub struct Grant {
    token_digest: TokenDigest,
    access: Access,
    databases: Option<Vec<String>>,
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Parses `TWILL_TOKENS`. A malformed setting refuses every request rather than opening up.
pub fn parse_rules(raw: Option<String>) -> Result<Vec<Grant>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    // The parser's message may quote the setting's text, tokens included: say where only.
    let rules: Vec<TokenRule> = serde_json::from_str(&raw).map_err(|e| {
        ApiError::new(
            500,
            "MISCONFIGURED",
            format!(
                "TWILL_TOKENS is not a valid token list (line {}, column {}): expected \
                 [{{\"token\": \"...\", \"access\": \"read\" or \"write\", \"databases\": [...] (optional)}}]",
                e.line(),
                e.column()
            ),
        )
    })?;
    if rules.iter().any(|r| r.token.len() < 16) {
        return Err(ApiError::new(500, "MISCONFIGURED", "tokens must be at least 16 characters"));
    }
    Ok(rules
        .into_iter()
        .map(|r| Grant { token_digest: digest(&r.token), access: r.access, databases: r.databases })
        .collect())
}

/// Who sent a request: the grant its token matched, or anyone when access is anonymous.
/// Authenticating hashes the sent token once; each database the request touches is then
/// checked against the same caller.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    Anonymous,
    Holder(&'a Grant),
}

/// Finds the rule the request's `Authorization` header matches. Every request must pass
/// this, whatever it names.
pub fn authenticate<'a>(rules: &'a AccessRules, authorization: Option<&str>) -> Result<Caller<'a>, ApiError> {
    let rules = match rules {
        AccessRules::Anonymous => return Ok(Caller::Anonymous),
        AccessRules::Tokens(rules) => rules,
    };
    let unauthorized = |m: &str| ApiError::new(401, "UNAUTHORIZED", m.to_string());
    let Some(header) = authorization else {
        return Err(unauthorized("missing Authorization: Bearer <token>"));
    };
    let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).unwrap_or("").trim();
    // Compare against every rule so timing does not reveal which one matched.
    let sent = digest(token);
    let mut matched: Option<&Grant> = None;
    for rule in rules {
        if bool::from(rule.token_digest.ct_eq(&sent)) && matched.is_none() {
            matched = Some(rule);
        }
    }
    matched.map(Caller::Holder).ok_or_else(|| unauthorized("invalid token"))
}

impl Caller<'_> {
    /// The access this caller has to `database` (`None`: routes that name no database).
    pub fn access_to(&self, database: Option<&str>) -> Result<Access, ApiError> {
        let rule = match self {
            Caller::Anonymous => return Ok(Access::Write),
            Caller::Holder(rule) => rule,
        };
        if let (Some(dbs), Some(database)) = (&rule.databases, database) {
            if !dbs.iter().any(|d| d == database) {
                return Err(ApiError::new(403, "FORBIDDEN", format!("this token has no access to database {database:?}")));
            }
        }
        Ok(rule.access)
    }
}

/// The access the request's `Authorization` header grants on `database`.
#[cfg(test)]
fn authorize(rules: &AccessRules, authorization: Option<&str>, database: Option<&str>) -> Result<Access, ApiError> {
    authenticate(rules, authorization)?.access_to(database)
}

/// Refuses statements a read-only token may not run.
pub fn check_read_only(statements: &[Statement]) -> Result<(), ApiError> {
    for s in statements {
        if check_statement(&s.sql)? != StatementKind::Read {
            return Err(read_only_error());
        }
    }
    Ok(())
}

pub fn read_only_error() -> ApiError {
    ApiError::new(403, "READ_ONLY", "this token is read-only and the statement may write")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_what_they_say() {
        let rules = AccessRules::Tokens(
            parse_rules(Some(
                r#"[{"token":"full-token-0123456789","access":"write"},
                {"token":"read-token-0123456789","access":"read","databases":["a"]}]"#
                    .into(),
            ))
            .unwrap(),
        );
        assert_eq!(authorize(&rules, Some("Bearer full-token-0123456789"), Some("x")).unwrap(), Access::Write);
        assert_eq!(authorize(&rules, Some("Bearer read-token-0123456789"), Some("a")).unwrap(), Access::Read);
        assert_eq!(authorize(&rules, Some("Bearer read-token-0123456789"), Some("b")).unwrap_err().status, 403);
        assert_eq!(authorize(&rules, Some("Bearer nope"), Some("a")).unwrap_err().status, 401);
        assert_eq!(authorize(&rules, None, Some("a")).unwrap_err().status, 401);
        assert_eq!(authorize(&AccessRules::Anonymous, None, Some("a")).unwrap(), Access::Write);
        // A wrong token, however long, is never echoed back.
        let sent = "Bearer a-very-secret-looking-token-that-must-not-leak";
        let e = authorize(&rules, Some(sent), Some("a")).unwrap_err();
        assert!(!e.message.contains("a-very-secret") && !e.body().to_string().contains("a-very-secret"), "{e:?}");
        let e = parse_rules(Some(r#"[{"token":"a-very-secret-but-malformed","access":"admin"}]"#.into())).unwrap_err();
        assert!(!e.message.contains("a-very-secret"), "{e:?}");
        assert_eq!(authorize(&rules, Some("Bearer read-token-0123456789"), None).unwrap(), Access::Read);
        assert!(parse_rules(Some(r#"[{"token":"short","access":"read"}]"#.into())).is_err());
        assert!(check_read_only(&[Statement::new("SELECT 1")]).is_ok());
        assert!(check_read_only(&[Statement::new("INSERT INTO t VALUES (1)")]).is_err());
        assert!(check_read_only(&[Statement::new("PRAGMA foreign_keys = off")]).is_err());
    }
}
