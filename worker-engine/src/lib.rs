//! The TwillDB Edge Worker: HTTP routing in front of engine-core, durable in R2.
//!
//! A request flows: `fetch` → [`routes`] (which endpoint) → [`auth`] (who may) →
//! [`sql_api`] or [`hrana`] (what to run) → [`db_request`] (the engine, through this
//! isolate's [`registry`]) → a JSON answer with `meta` (its bookmark among it).
//! Service-binding RPC enters through [`rpc`]. Settings: see [`settings`].

mod admin_api;
mod auth;
pub mod baton;
mod db_request;
mod export_api;
mod history_api;
pub mod hrana;
mod import_api;
mod incoming;
mod lane;
mod registry;
mod routes;
mod rpc;
mod settings;
mod sql_api;
mod upload_api;
pub mod wire;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Wake, Waker};

use engine_core::Bookmark;
use serde_json::Value;
use wire::ApiError;
use worker::{console_error, console_log, event, web_sys, Context, Env, Response, ScheduleContext, ScheduledEvent};

/// The clock std reads on wasm32 (see scripts/patch-wasm-std-time.py): without it std's
/// `Instant::now`/`SystemTime::now` panic, and turso_core calls them (its temp database,
/// `datetime('now')`). An interactive transaction pins what SQL sees as "now".
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn __twill_wasm_now_ms() -> f64 {
    engine_core::host::sql_clock_ms(js_sys::Date::now)
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Header naming the commit an answer reflects (also `meta.bookmark`).
pub const BOOKMARK_HEADER: &str = "x-twill-bookmark";

/// A successful answer: its JSON body, a `Server-Timing` entry, its bookmark; or a file
/// (an export), streamed as it is.
pub struct Answer {
    pub body: Body,
    pub timing: Option<String>,
    pub bookmark: Option<Bookmark>,
    pub file: Option<Response>,
}

/// An answer's JSON body: a value, or text already encoded (SQL results are serialized
/// straight from the engine's rows, without building a value first).
pub enum Body {
    Value(Value),
    Encoded(String),
    /// JSON lines, each object ended by a newline (Hrana cursors).
    Lines(String),
}

impl Answer {
    pub fn json(body: Value) -> Self {
        Answer { body: Body::Value(body), timing: None, bookmark: None, file: None }
    }

    pub fn file(response: Response, bookmark: Bookmark) -> Self {
        Answer { body: Body::Value(Value::Null), timing: None, bookmark: Some(bookmark), file: Some(response) }
    }
}

/// `value` as JSON text; an error only if it cannot be encoded (a bug, answered as one).
pub(crate) fn encode(value: &impl serde::Serialize) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| internal(&format!("encoding the answer: {e}")))
}

/// The names of the headers the JS entry passes to [`fetch`] as arguments, in the order of
/// its parameters, comma-separated: the entry reads them once at startup, so each name is
/// spelled only here.
#[wasm_bindgen::prelude::wasm_bindgen(js_name = headHeaders)]
pub fn head_headers() -> String {
    ["authorization", BOOKMARK_HEADER, db_request::STALENESS_HEADER, history_api::AS_OF_HEADER].join(",")
}

/// The HTTP entry, called by `ts/src/worker-entry.ts` with what it read from the request
/// ([`incoming::Head`]) and the request's body when it has already read it (a small POST
/// body: one `await` in JS is cheaper than the same `await` driven from wasm), else
/// undefined. Returns the Response, or a Promise of it when the answer has to wait (see
/// [`now_or_later`]).
#[wasm_bindgen::prelude::wasm_bindgen]
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    req: web_sys::Request,
    method: String,
    url: String,
    has_body: bool,
    authorization: Option<String>,
    bookmark: Option<String>,
    staleness: Option<String>,
    as_of: Option<String>,
    body: Option<Vec<u8>>,
    env: Env,
    ctx: worker::worker_sys::Context,
) -> wasm_bindgen::JsValue {
    let head = incoming::Head { method, url, has_body, authorization, bookmark, staleness, as_of };
    now_or_later(async move {
        let response = match serve(incoming::Incoming::new(req, head, body), env, Context::new(ctx)).await {
            Ok(response) => response,
            Err(e) => {
                console_error!("{e}");
                let body = internal(&format!("answering the request: {e}")).body();
                json_response(&body.to_string(), 500, "", BOOKMARK_HEADER, None, false)?
            }
        };
        Ok(response.into())
    })
}

/// Runs `answer` as far as it goes without waiting. A warm read finishes there, and its
/// value is returned as it is: no Promise, no task and no microtask, which handing the
/// future to wasm-bindgen-futures costs (about a tenth of a warm point select's time in a
/// CPU profile). Otherwise the future goes on as a Promise. Futures that kept the waker of
/// that first poll (`worker::Delay` keeps its first) wake the task through [`ForwardWaker`].
fn now_or_later(answer: impl Future<Output = Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue>> + 'static) -> wasm_bindgen::JsValue {
    let mut answer = Box::pin(answer);
    let forward = Arc::new(ForwardWaker::default());
    let waker = Waker::from(forward.clone());
    match answer.as_mut().poll(&mut std::task::Context::from_waker(&waker)) {
        Poll::Ready(Ok(value)) => value,
        Poll::Ready(Err(e)) => js_sys::Promise::reject(&e).into(),
        Poll::Pending => wasm_bindgen_futures::future_to_promise(std::future::poll_fn(move |cx| {
            forward.forward_to(cx.waker());
            answer.as_mut().poll(cx)
        }))
        .into(),
    }
}

/// A waker that wakes whichever task now runs the future it was handed to (set with
/// [`ForwardWaker::forward_to`] at each poll); before that, waking it does nothing (the
/// task polls the future once it starts anyway).
#[derive(Default)]
struct ForwardWaker(Mutex<Option<Waker>>);

impl ForwardWaker {
    fn forward_to(&self, waker: &Waker) {
        if let Ok(mut slot) = self.0.lock() {
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
    }
}

impl Wake for ForwardWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(waker) = self.0.lock().ok().and_then(|slot| slot.clone()) {
            waker.wake();
        }
    }
}

async fn serve(req: incoming::Incoming, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    let started = js_sys::Date::now();
    // Errors of Hrana requests take Hrana's shape.
    let hrana = routes::looks_like_hrana(req.path());
    let answer = sql_api::handle(req, &env, started).await;
    registry::schedule_quiet_checkpoints(&ctx);
    let (status, body, timing, bookmark) = match answer {
        Ok(Answer { file: Some(mut file), bookmark, .. }) => {
            file.headers_mut().set("Cache-Control", "no-store")?;
            if let Some(b) = bookmark {
                file.headers_mut().set(BOOKMARK_HEADER, &b.to_string())?;
            }
            return Ok(file.into());
        }
        Ok(a) => (200, a.body, a.timing, a.bookmark),
        Err(e) if hrana => (e.status, Body::Value(e.hrana_body()), None, None),
        Err(e) => (e.status, Body::Value(e.body()), None, None),
    };
    let elapsed = js_sys::Date::now() - started;
    let server_timing = match timing {
        Some(t) => format!("total;dur={elapsed}, {t}"),
        None => format!("total;dur={elapsed}"),
    };
    let (text, lines) = match body {
        Body::Encoded(text) => (text, false),
        Body::Lines(text) => (text, true),
        Body::Value(v) => {
            (serde_json::to_string(&v).map_err(|e| worker::Error::RustError(format!("encoding the answer: {e}")))?, false)
        }
    };
    Ok(json_response(&text, status, &server_timing, BOOKMARK_HEADER, bookmark.map(|b| b.to_string()), lines)?)
}

// Made in one call into JS rather than through worker::Response or web_sys's Headers and
// ResponseInit, which take a JS call per header and field.
#[wasm_bindgen::prelude::wasm_bindgen(inline_js = "export function jsonResponse(text, status, timing, bookmarkHeader, bookmark, lines) {
  const headers = { 'content-type': lines ? 'application/x-ndjson' : 'application/json', 'server-timing': timing, 'cache-control': 'no-store' };
  if (bookmark !== undefined) headers[bookmarkHeader] = bookmark;
  return new Response(text, { status, headers });
}")]
extern "C" {
    /// A JSON answer with our headers, `bookmark` (if any) under `bookmark_header`; `lines`:
    /// JSON lines rather than one JSON value.
    #[wasm_bindgen(js_name = jsonResponse, catch)]
    fn json_response(
        text: &str,
        status: u16,
        timing: &str,
        bookmark_header: &str,
        bookmark: Option<String>,
        lines: bool,
    ) -> Result<web_sys::Response, wasm_bindgen::JsValue>;
}

/// The cron trigger (wrangler.toml): purges databases deleted longer ago than the history
/// window. Failures are logged; the next run tries again.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match admin_api::expire_deletions(&env).await {
        Ok(sweep) => console_log!(
            "twill sweep: {} databases listed, purged {:?}, purged logs deleted {:?}",
            sweep.listed,
            sweep.expired,
            sweep.logs_swept
        ),
        Err(e) => console_error!("twill sweep failed: {} {}", e.code, e.message),
    }
}

/// Errors of the engine, as answers: used where no endpoint-specific shape applies.
pub(crate) fn internal(message: &str) -> ApiError {
    ApiError::new(500, "INTERNAL_ERROR", message)
}

/// Which endpoints exist, for `GET /`.
pub(crate) fn describe_service() -> Value {
    serde_json::json!({
        "service": "TwillDB Edge",
        "routes": {
            "POST /v1/db/{name}/query": {"sql": "...", "params": "[...] or {...}", "bookmark": "optional"},
            "POST /v1/db/{name}/batch": {"statements": [{"sql": "...", "params": "..."}], "bookmark": "optional"},
            "POST /v1/db/{name}/exec": {"sql": "statements separated by semicolons"},
            "GET /v1/db/{name}/stats": {},
            "GET /v1/db/{name}/history": {"at": "optional query parameter: RFC 3339 time or ms since the epoch"},
            "POST /v1/db/{name}/restore": {"bookmark": "or", "time": "RFC 3339 or ms"},
            "POST /v1/db/{name}/fork": {"to": "new database", "bookmark": "optional (or time)"},
            "PUT /v1/db/{name}/import": {"body": "a SQLite database file (or gzip with content-encoding: gzip)", "replace": "query parameter: true to replace a database that has tables"},
            "GET /v1/db": {"limit": "1-200 (default 50)", "after": "the previous page's next", "deleted": "true to list deleted databases too"},
            "GET /v1/db/{name}": {"answer": "size, newest commit, checkpoint, history window, fork origin, deletion"},
            "DELETE /v1/db/{name}": {"purge": "query parameter: true ends the history too and deletes the old objects now; without, restoring the answer's previous bookmark undoes the deletion within the history window"},
            "GET /v1/db/{name}/export": {"as_of": "optional query parameter: bookmark or time; the SQLite file of that commit"},
            "as_of": "in /query and /batch (or header x-twill-as-of): read the state after a past commit",
            "libSQL (Hrana over HTTP, JSON)": "client URL http(s)://<host>/v1/db/{name}/ (POST v2/pipeline, v3/pipeline)",
        }
    })
}
