//! `PUT /v1/db/{name}/import[?replace=true]`: a SQLite database file, or a SQL dump
//! (`content-type: application/sql`), as the body (also `content-encoding: gzip`), streamed
//! into the engine's import in bounded memory.

use engine_core::EngineError;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use wasm_bindgen::JsCast;
use worker::ByteStream;

use crate::incoming::Incoming;

use crate::db_request::DbRequest;
use crate::wire::ApiError;
use crate::Answer;

/// Bytes an import may hold once decompressed (a gzip bomb stops here).
pub const MAX_IMPORT_BYTES: u64 = 4 << 30;

/// A header's value, trimmed and lowercased (media types and encodings fold case).
fn header(req: &Incoming, name: &str) -> Option<String> {
    req.header(name).map(|v| v.trim().to_ascii_lowercase())
}

/// The request body as bytes, decompressed if it says it is gzip.
fn body_stream(req: &Incoming) -> Result<ByteStream, ApiError> {
    let invalid = |m: &str| ApiError::bad_request("INVALID_REQUEST", m);
    match header(req, "content-encoding").as_deref() {
        None | Some("identity") => req.take_body().map(ByteStream::from).ok_or_else(|| invalid("the import needs the database file as the body")),
        Some("gzip") => {
            let body = req.take_body().ok_or_else(|| invalid("the import needs the database file as the body"))?;
            let decompressed = (|| {
                let ctor = js_sys::Reflect::get(&js_sys::global(), &"DecompressionStream".into())?;
                let ctor: js_sys::Function = ctor.unchecked_into();
                let ds = js_sys::Reflect::construct(&ctor, &js_sys::Array::of1(&"gzip".into()))?;
                let pipe: js_sys::Function = js_sys::Reflect::get(&body, &"pipeThrough".into())?.unchecked_into();
                pipe.call1(&body, &ds)
            })()
            .map_err(|_| crate::internal("DecompressionStream is not available"))?;
            Ok(ByteStream::from(decompressed.unchecked_into::<worker::web_sys::ReadableStream>()))
        }
        Some(other) => Err(ApiError::new(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            format!("content-encoding {other} is not accepted: send the file as is, or gzip-compressed"),
        )),
    }
}

/// At most how many bytes a body may hold once decompressed, and the limit's name.
pub(crate) struct BodyLimit {
    pub what: &'static str,
    pub bytes: u64,
    pub name: &'static str,
}

/// The request body to hand to the engine: its pieces (decompressed if gzip) up to
/// `limit`, and a handle on the stream for [`drain`] once the engine is done with it.
pub(crate) async fn uploaded_body(
    req: &Incoming,
    limit: BodyLimit,
) -> Result<(SharedBody, impl futures::Stream<Item = Result<Vec<u8>, EngineError>> + Unpin + 'static), ApiError> {
    let stream = match body_stream(req) {
        Ok(stream) => std::rc::Rc::new(std::cell::RefCell::new(stream)),
        Err(e) => {
            if let Some(raw) = req.take_body() {
                drain(&mut ByteStream::from(raw)).await;
            }
            return Err(e);
        }
    };
    let mut total: u64 = 0;
    let shared = stream.clone();
    let pieces = futures::stream::poll_fn(move |cx| shared.borrow_mut().poll_next_unpin(cx)).map(move |piece| {
        let piece = piece.map_err(|e| EngineError::InvalidFile(format!("reading the body failed: {e}")))?;
        total += piece.len() as u64;
        if total > limit.bytes {
            let BodyLimit { what, bytes, name } = limit;
            return Err(EngineError::Limit(format!("{what} may hold at most {bytes} bytes once decompressed ({name} limit)")));
        }
        Ok(piece)
    });
    Ok((stream, Box::pin(pieces)))
}

/// A request body shared between the engine reading it and the handler draining it.
pub(crate) type SharedBody = std::rc::Rc<std::cell::RefCell<ByteStream>>;

/// Reads what is left of `stream` and drops it. An answer sent while the client is still
/// uploading makes many HTTP clients (Node's fetch among them) fail with a connection reset
/// instead of reading the answer: a refused import reads its body to the end first.
pub(crate) async fn drain(stream: &mut ByteStream) {
    let mut read: u64 = 0;
    while let Some(Ok(piece)) = stream.next().await {
        read += piece.len() as u64;
        if read > MAX_IMPORT_BYTES {
            break;
        }
    }
}

/// What the body of an import holds, by its content-type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImportKind {
    SqliteFile,
    SqlDump,
}

const FILE_TYPES: [&str; 3] = ["application/vnd.sqlite3", "application/x-sqlite3", "application/octet-stream"];
const SQL_TYPES: [&str; 3] = ["application/sql", "application/x-sql", "text/plain"];

pub async fn import(db: DbRequest, req: &Incoming, replace: bool) -> Result<Answer, ApiError> {
    let mut kind = ImportKind::SqliteFile;
    if let Some(content_type) = header(req, "content-type") {
        if SQL_TYPES.iter().any(|a| content_type.starts_with(a)) {
            kind = ImportKind::SqlDump;
        } else if !FILE_TYPES.iter().any(|a| content_type.starts_with(a)) {
            if let Some(raw) = req.take_body() {
                drain(&mut ByteStream::from(raw)).await;
            }
            return Err(ApiError::new(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                format!(
                    "content-type {content_type} is not accepted: import a SQLite database file ({}) or a SQL dump ({})",
                    FILE_TYPES.join(", "),
                    SQL_TYPES.join(", ")
                ),
            ));
        }
    }
    let limit = BodyLimit { what: "an import", bytes: MAX_IMPORT_BYTES, name: "IMPORT_SIZE" };
    let (stream, body) = uploaded_body(req, limit).await?;
    let outcome = match kind {
        ImportKind::SqliteFile => db.exclusive(move |d| d.import_file(body, replace).boxed_local()).await,
        ImportKind::SqlDump => db.exclusive(move |d| d.import_sql(body, replace).boxed_local()).await,
    };
    let (imported, r2) = match outcome {
        Ok(done) => done,
        Err(e) => {
            drain(&mut stream.borrow_mut()).await;
            return Err(e);
        }
    };
    Ok(imported_answer(&imported, r2))
}

/// The answer to an import that published.
pub(crate) fn imported_answer(imported: &engine_core::Imported, r2: engine_core::store::StoreCounts) -> Answer {
    let bookmark = imported.bookmark;
    let check = match imported.check {
        engine_core::FileCheck::QuickCheck => "quick_check",
        engine_core::FileCheck::Structure => "structure",
    };
    let body = json!({
        "bookmark": bookmark,
        "previous": imported.previous.to_string(),
        "bytes": imported.bytes,
        "pages": imported.pages,
        "check": check,
        "statements": imported.statements,
        "meta": { "bookmark": bookmark, "r2_reads": r2.reads, "r2_writes": r2.writes },
    });
    Answer { body: crate::Body::Value(body), timing: None, bookmark: Some(bookmark), file: None }
}
