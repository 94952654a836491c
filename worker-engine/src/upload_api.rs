//! Upload sessions: `POST .../uploads`, `PUT .../uploads/{id}/{part}`, `GET .../uploads/{id}`,
//! `POST .../uploads/{id}/complete`, `DELETE .../uploads/{id}`: a SQLite file larger than
//! one request body, imported in parts (see engine-core's `database/upload.rs`).

use engine_core::SessionState;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::json;

use crate::db_request::DbRequest;
use crate::import_api::{drain, imported_answer, uploaded_body, BodyLimit};
use crate::routes::{UploadStep, UploadTarget};
use crate::wire::ApiError;
use crate::Answer;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BeginJson {
    #[serde(default)]
    part_bytes: Option<u64>,
    #[serde(default)]
    replace: bool,
}

fn parse_begin(body: &[u8]) -> Result<BeginJson, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(BeginJson::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("INVALID_REQUEST", format!("the body may hold {{\"part_bytes\"?: number, \"replace\"?: bool}}: {e}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteJson {
    parts: u32,
}

/// How many parts the file has: the client's word, since the store cannot tell a whole
/// file from its beginning.
fn parse_complete(body: &[u8]) -> Result<u32, ApiError> {
    serde_json::from_slice::<CompleteJson>(body).map(|c| c.parts).map_err(|e| {
        ApiError::bad_request("INVALID_REQUEST", format!("the body must be {{\"parts\": <how many parts the file has>}}: {e}"))
    })
}

fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Open => "open",
        SessionState::Publishing => "publishing",
        SessionState::Abandoned => "abandoned",
    }
}

fn target(upload: Option<UploadTarget>) -> Result<UploadTarget, ApiError> {
    upload.ok_or_else(|| crate::internal("an upload route without its session"))
}

pub async fn handle(
    db: DbRequest,
    req: &crate::incoming::Incoming,
    step: UploadStep,
    upload: Option<UploadTarget>,
    body: Option<Vec<u8>>,
) -> Result<Answer, ApiError> {
    match step {
        UploadStep::Begin => {
            let begin = parse_begin(body.as_deref().unwrap_or_default())?;
            let (session, _) = db.exclusive(move |d| d.begin_upload(begin.part_bytes, begin.replace).boxed_local()).await?;
            Ok(Answer::json(json!({
                "upload": session.id,
                "part_bytes": session.part_bytes,
                "expires_ms": session.expires_ms,
                "max_bytes": engine_core::UPLOAD_MAX_BYTES,
            })))
        }
        UploadStep::Part => {
            let UploadTarget { id, part } = target(upload)?;
            let part = part.ok_or_else(|| crate::internal("a part route without its number"))?;
            let limit = BodyLimit { what: "a part", bytes: engine_core::UPLOAD_PART_MAX_BYTES, name: "UPLOAD_PART_SIZE" };
            let (stream, pieces) = uploaded_body(req, limit).await?;
            let outcome = db.exclusive(move |d| async move { d.upload_part(&id, part, pieces).await }.boxed_local()).await;
            let (stored, _) = match outcome {
                Ok(done) => done,
                Err(e) => {
                    drain(&mut stream.borrow_mut()).await;
                    return Err(e);
                }
            };
            Ok(Answer::json(json!({
                "part": stored.part,
                "bytes": stored.bytes,
                "sha256": stored.sha256,
                "already_stored": stored.already_stored,
            })))
        }
        UploadStep::Status => {
            let UploadTarget { id, .. } = target(upload)?;
            let (status, _) = db.exclusive(move |d| async move { d.upload_status(&id).await }.boxed_local()).await?;
            let parts: Vec<_> = status.parts.iter().map(|(part, bytes)| json!({ "part": part, "bytes": bytes })).collect();
            Ok(Answer::json(json!({
                "upload": status.session.id,
                "state": state_name(status.state),
                "part_bytes": status.session.part_bytes,
                "expires_ms": status.session.expires_ms,
                "parts": parts,
                "bytes": status.parts.iter().map(|(_, b)| b).sum::<u64>(),
            })))
        }
        UploadStep::Complete => {
            let UploadTarget { id, .. } = target(upload)?;
            let parts = parse_complete(body.as_deref().unwrap_or_default())?;
            let (imported, r2) = db.exclusive(move |d| async move { d.complete_upload(&id, parts).await }.boxed_local()).await?;
            Ok(imported_answer(&imported, r2))
        }
        UploadStep::Abort => {
            let UploadTarget { id, .. } = target(upload)?;
            let (deleted, _) = db.exclusive(move |d| async move { d.abort_upload(&id).await }.boxed_local()).await?;
            Ok(Answer::json(json!({ "aborted": true, "objects_deleted": deleted })))
        }
    }
}
