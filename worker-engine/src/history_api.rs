//! History over HTTP: `GET /history?at=` (the commit at a time, and the window),
//! `as_of` reads (`"as_of"` in `/query` and `/batch`, or the `x-twill-as-of` header) and
//! `POST /restore`. A point in history is a bookmark, or a time: RFC 3339 or ms since the
//! Unix epoch.

use engine_core::bookmark::Bookmark;
use engine_core::{Database, EngineError, Work};
use futures::FutureExt;
use serde::Deserialize;
use serde_json::json;

use crate::db_request::DbRequest;
use crate::wire::ApiError;
use crate::Answer;

/// Header naming the past commit (bookmark or time) a read-only request reads.
pub const AS_OF_HEADER: &str = "x-twill-as-of";

/// A point in a database's history, as a client names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Commit(Bookmark),
    /// ms since the Unix epoch: the last commit at or before it.
    Time(u64),
}

impl Point {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let text = text.trim();
        if text.starts_with("tw") {
            return Ok(Point::Commit(text.parse().map_err(ApiError::from)?));
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse().map(Point::Time).map_err(|_| invalid_point(text));
        }
        let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| invalid_point(text))?;
        u64::try_from(t.timestamp_millis()).map(Point::Time).map_err(|_| invalid_point(text))
    }

    /// The commit this point names on `db`.
    pub async fn resolve(self, db: &mut Database) -> Result<u64, EngineError> {
        match self {
            Point::Commit(b) => Ok(b.seq()),
            Point::Time(ms) => Ok(db.commit_at(ms).await?.seq()),
        }
    }
}

fn invalid_point(text: &str) -> ApiError {
    ApiError::bad_request(
        "INVALID_REQUEST",
        format!("{text:?} names no point in history: give a bookmark (\"tw\" and 16 hex digits), an RFC 3339 time (2026-11-29T12:00:00Z) or ms since the Unix epoch"),
    )
}

/// `GET /v1/db/{name}/history[?at=...]`: the history window, and the commit at `at`.
pub async fn history(db: DbRequest, at: Option<&str>) -> Result<Answer, ApiError> {
    let at = at.map(Point::parse).transpose()?;
    let ((window, found), r2) = db
        .exclusive(move |d| {
            async move {
                let window = d.history_window().await?;
                let found = match at {
                    Some(point) => Some(point.resolve(d).await?),
                    None => None,
                };
                Ok((window, found))
            }
            .boxed_local()
        })
        .await?;
    let mut body = json!({
        "window": {
            "from": window.from.to_string(),
            "from_ms": window.from_ms,
            "head": window.head.to_string(),
            "head_ms": window.head_ms,
        },
        "meta": { "r2_reads": r2.reads, "r2_writes": r2.writes },
    });
    if let Some(seq) = found {
        body["bookmark"] = json!(Bookmark(seq).to_string());
    }
    Ok(Answer::json(body))
}

/// Runs `work` against the state after the commit `as_of` names; it must only read
/// (`STATEMENT_NOT_ALLOWED` before anything runs otherwise).
pub async fn read_as_of(db: DbRequest, as_of: Point, work: Work, started: f64) -> Result<crate::db_request::Performed, ApiError> {
    if let Work::Transaction(statements) = &work {
        crate::auth::check_read_only(statements).map_err(|_| {
            ApiError::bad_request("STATEMENT_NOT_ALLOWED", "a read of a past commit (as_of) is read-only: only statements that read may run")
        })?;
    }
    db.perform_past(
        move |d| {
            async move {
                let seq = as_of.resolve(d).await?;
                d.past(seq).await
            }
            .boxed_local()
        },
        work,
        started,
    )
    .await
}

/// A point given as `{"bookmark": ...}` or `{"time": ...}` in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointJson {
    #[serde(default)]
    bookmark: Option<String>,
    #[serde(default)]
    time: Option<serde_json::Value>,
}

impl PointJson {
    /// The point named; `None` if neither is given.
    fn point(self) -> Result<Option<Point>, ApiError> {
        Ok(Some(match (self.bookmark, self.time) {
            (None, None) => return Ok(None),
            (Some(b), None) => Point::Commit(b.trim().parse().map_err(ApiError::from)?),
            (None, Some(serde_json::Value::String(t))) => Point::parse(&t)?,
            (None, Some(serde_json::Value::Number(n))) => Point::Time(
                n.as_u64().ok_or_else(|| ApiError::bad_request("INVALID_REQUEST", "time must be ms since the Unix epoch"))?,
            ),
            _ => {
                return Err(ApiError::bad_request(
                    "INVALID_REQUEST",
                    "give one of \"bookmark\" (a bookmark) or \"time\" (RFC 3339 or ms since the Unix epoch)",
                ))
            }
        }))
    }
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("request body: {e}")))
}

/// `POST /v1/db/{name}/restore {"bookmark": ...} | {"time": ...}`: the state after that
/// commit becomes the current one, as a new commit.
pub async fn restore(db: DbRequest, body: &[u8]) -> Result<Answer, ApiError> {
    let point = parse_body::<PointJson>(body)?.point()?.ok_or_else(|| {
        ApiError::bad_request("INVALID_REQUEST", "name the commit to restore: {\"bookmark\": ...} or {\"time\": ...}")
    })?;
    let (restored, r2) = db
        .exclusive(move |d| {
            async move {
                let seq = point.resolve(d).await?;
                d.restore(seq).await
            }
            .boxed_local()
        })
        .await?;
    let bookmark = restored.bookmark;
    let body = json!({
        "restored": restored.restored.to_string(),
        "previous": restored.previous.to_string(),
        "bookmark": bookmark,
        "meta": { "bookmark": bookmark, "r2_reads": r2.reads, "r2_writes": r2.writes },
    });
    Ok(Answer { body: crate::Body::Value(body), timing: None, bookmark: Some(bookmark), file: None })
}

/// A fork request: the new database's name, and the commit to start from (default: the
/// newest).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkJson {
    pub to: String,
    #[serde(default)]
    bookmark: Option<String>,
    #[serde(default)]
    time: Option<serde_json::Value>,
}

pub fn parse_fork(body: &[u8]) -> Result<ForkJson, ApiError> {
    parse_body(body)
}

/// `POST /v1/db/{name}/fork {"to": "new", "bookmark"?, "time"?}`: database `to` starts as
/// that commit's state, sharing this database's chunks.
pub async fn fork(db: DbRequest, request: ForkJson) -> Result<Answer, ApiError> {
    let point = PointJson { bookmark: request.bookmark, time: request.time }.point()?;
    let child = request.to;
    let (forked, r2) = db
        .exclusive(move |d| {
            async move {
                let seq = match point {
                    Some(p) => p.resolve(d).await?,
                    None => d.history_window().await?.head.seq(),
                };
                d.fork(seq, &child).await
            }
            .boxed_local()
        })
        .await?;
    let body = json!({
        "database": forked.database,
        "from": forked.from.to_string(),
        "bookmark": forked.bookmark.to_string(),
        "meta": { "r2_reads": r2.reads, "r2_writes": r2.writes },
    });
    Ok(Answer::json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_from_bookmarks_times_and_ms() {
        assert_eq!(Point::parse("tw000000000000002a").unwrap(), Point::Commit(Bookmark(42)));
        assert_eq!(Point::parse("1767225600000").unwrap(), Point::Time(1_767_225_600_000));
        assert_eq!(Point::parse("2026-01-01T00:00:00Z").unwrap(), Point::Time(1_767_225_600_000));
        assert_eq!(Point::parse("2026-01-01T01:00:00.5+01:00").unwrap(), Point::Time(1_767_225_600_500));
        for bad in ["", "yesterday", "tw12", "-5", "2026-13-01T00:00:00Z"] {
            let e = Point::parse(bad).unwrap_err();
            assert!(matches!(e.code, "INVALID_REQUEST" | "INVALID_BOOKMARK"), "{bad}: {e:?}");
        }
    }
}
