//! `GET /v1/db/{name}/export[?as_of=<bookmark or time>][&format=sqlite|sql]`: one commit
//! (default: the newest) as a SQLite file, streamed with its `content-length`, or as SQL
//! text (what sqlite3's `.dump` writes), streamed without one; either way in bounded
//! memory (a chunk of 256 KiB, or 100 rows, at a time).

use engine_core::bookmark::Bookmark;
use engine_core::{EngineError, FileExport, SqlDump};
use futures::FutureExt;
use worker::{FixedLengthStream, Response, ResponseBody};

use crate::db_request::DbRequest;
use crate::history_api::Point;
use crate::wire::ApiError;
use crate::Answer;

/// What an export is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    SqliteFile,
    SqlText,
}

impl ExportFormat {
    pub fn parse(format: Option<&str>) -> Result<Self, ApiError> {
        match format {
            None | Some("sqlite") => Ok(ExportFormat::SqliteFile),
            Some("sql") => Ok(ExportFormat::SqlText),
            Some(other) => {
                Err(ApiError::bad_request("INVALID_REQUEST", format!("format must be sqlite (a database file) or sql (SQL text), not {other:?}")))
            }
        }
    }
}

/// An export's bytes in either format, handed out a piece at a time.
enum Pieces {
    Sql(SqlDump),
    File(FileExport),
}

impl Pieces {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        match self {
            Pieces::Sql(dump) => dump.next_piece().await,
            Pieces::File(file) => file.next_piece().await,
        }
    }

    fn stream(self) -> impl futures::Stream<Item = worker::Result<Vec<u8>>> {
        futures::stream::try_unfold(self, |mut pieces| async move {
            let piece = pieces.next().await.map_err(|e| worker::Error::from(e.to_string()))?;
            Ok(piece.map(|piece| (piece, pieces)))
        })
    }
}

pub async fn export(db: DbRequest, as_of: Option<&str>, name: &str, format: ExportFormat) -> Result<Answer, ApiError> {
    let as_of = as_of.map(Point::parse).transpose()?;
    let ((past, seq), _) = db
        .exclusive(move |d| {
            async move {
                let seq = match as_of {
                    Some(point) => point.resolve(d).await?,
                    None => d.history_window().await?.head.seq(),
                };
                Ok((d.past(seq).await?, seq))
            }
            .boxed_local()
        })
        .await?;
    let bookmark = Bookmark(seq);
    if format == ExportFormat::SqlText {
        let response = Response::from_stream(Pieces::Sql(past.export_sql()).stream()).map_err(|e| crate::internal(&e.to_string()))?;
        let headers = response.headers();
        let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| crate::internal(&e.to_string()));
        set("content-type", "application/sql; charset=utf-8")?;
        set("content-disposition", &format!("attachment; filename=\"{name}-{bookmark}.sql\""))?;
        return Ok(Answer::file(response, bookmark));
    }
    let file = past.export_file()?;
    let length = file.len();
    let stream: worker::worker_sys::FixedLengthStream = FixedLengthStream::wrap(Pieces::File(file).stream(), length).into();
    let readable = js_sys::Reflect::get(&stream, &"readable".into())
        .map_err(|_| crate::internal("FixedLengthStream has no readable side"))?;
    let response = Response::from_body(ResponseBody::Stream(wasm_bindgen::JsCast::unchecked_into(readable)))
        .map_err(|e| crate::internal(&e.to_string()))?;
    let headers = response.headers();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| crate::internal(&e.to_string()));
    set("content-type", "application/vnd.sqlite3")?;
    set("content-disposition", &format!("attachment; filename=\"{name}-{bookmark}.sqlite3\""))?;
    Ok(Answer::file(response, bookmark))
}
