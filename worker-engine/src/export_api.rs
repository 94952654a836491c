//! `GET /v1/db/{name}/export[?as_of=<bookmark or time>]`: the SQLite file of one commit
//! (default: the newest), streamed with its `content-length` in bounded memory: one chunk
//! of the state (256 KiB) is in memory at a time.

use engine_core::bookmark::Bookmark;
use engine_core::FileExport;
use futures::FutureExt;
use worker::{FixedLengthStream, Response, ResponseBody};

use crate::db_request::DbRequest;
use crate::history_api::Point;
use crate::wire::ApiError;
use crate::Answer;

pub async fn export(db: DbRequest, as_of: Option<&str>, name: &str) -> Result<Answer, ApiError> {
    let as_of = as_of.map(Point::parse).transpose()?;
    let ((file, seq), _) = db
        .exclusive(move |d| {
            async move {
                let seq = match as_of {
                    Some(point) => point.resolve(d).await?,
                    None => d.history_window().await?.head.seq(),
                };
                Ok((d.past(seq).await?.export_file()?, seq))
            }
            .boxed_local()
        })
        .await?;
    let length = file.len();
    let pieces = futures::stream::try_unfold(file, |mut file: FileExport| async move {
        match file.next_piece().await {
            Ok(Some(piece)) => Ok(Some((piece, file))),
            Ok(None) => Ok(None),
            Err(e) => Err(worker::Error::from(e.to_string())),
        }
    });
    let stream: worker::worker_sys::FixedLengthStream = FixedLengthStream::wrap(pieces, length).into();
    let readable = js_sys::Reflect::get(&stream, &"readable".into())
        .map_err(|_| crate::internal("FixedLengthStream has no readable side"))?;
    let response = Response::from_body(ResponseBody::Stream(wasm_bindgen::JsCast::unchecked_into(readable)))
        .map_err(|e| crate::internal(&e.to_string()))?;
    let bookmark = Bookmark(seq).to_string();
    let headers = response.headers();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| crate::internal(&e.to_string()));
    set("content-type", "application/vnd.sqlite3")?;
    set("content-disposition", &format!("attachment; filename=\"{name}-{bookmark}.sqlite3\""))?;
    Ok(Answer::file(response, bookmark))
}
