//! The HTTP request as the Worker received it, read only as far as its route needs.
//!
//! `worker::Request` reads the method, the URL and `request.cf` (which the runtime builds as a
//! new JS object on each read) when it is made, and its body reader crosses into JS twice per
//! chunk: together about a fifth of a warm point select's time in a CPU profile. Here the
//! method, the URL and the headers most requests read come as arguments of the engine's
//! entry ([`Head`]: read by the JS entry, which costs less than any call from wasm into JS
//! to fetch them), the other headers one call each. Most routes need a small body known
//! in length: the JS entry reads a POST body of up to 1 MiB itself (`worker-entry.ts`), and
//! [`Incoming::body`] reads others with one `arrayBuffer()`; the routes that stream their body
//! (imports and upload parts, PUTs) take it once with [`Incoming::take_body`].

use std::cell::Cell;

use wasm_bindgen_futures::JsFuture;
use worker::{url, web_sys, ByteStream, Method};

use crate::db_request::STALENESS_HEADER;
use crate::history_api::AS_OF_HEADER;
use crate::wire::{ApiError, LIMITS};
use crate::BOOKMARK_HEADER;

/// What the JS entry (`worker-entry.ts`) reads from the request and hands over as arguments
/// of one call: the method, the URL and the headers most requests read. Other headers are
/// read from the request when a route asks for them (one call into JS each).
pub struct Head {
    pub method: String,
    /// The URL as the runtime serialized it (WHATWG): absolute, its path percent-encoded.
    pub url: String,
    pub has_body: bool,
    pub authorization: Option<String>,
    /// [`BOOKMARK_HEADER`].
    pub bookmark: Option<String>,
    /// [`STALENESS_HEADER`].
    pub staleness: Option<String>,
    /// [`AS_OF_HEADER`].
    pub as_of: Option<String>,
}

pub struct Incoming {
    raw: web_sys::Request,
    head: Head,
    body: Cell<BodyState>,
}

/// Where the request's body is: it can be read once.
#[derive(Default)]
enum BodyState {
    /// Still in the request.
    Unread,
    /// Read by the JS entry (a small POST body), handed over as bytes.
    Prefetched(Vec<u8>),
    /// Taken: read, or handed out as a stream.
    #[default]
    Taken,
}

impl Incoming {
    /// `prefetched`: the body, if the JS entry already read it.
    pub fn new(raw: web_sys::Request, head: Head, prefetched: Option<Vec<u8>>) -> Self {
        let body = match prefetched {
            Some(bytes) => BodyState::Prefetched(bytes),
            None if head.has_body => BodyState::Unread,
            None => BodyState::Taken,
        };
        Incoming { raw, head, body: Cell::new(body) }
    }

    pub fn method(&self) -> Method {
        Method::from(self.head.method.clone())
    }

    pub fn path(&self) -> &str {
        url_path(&self.head.url)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let head = &self.head;
        let known = [("authorization", &head.authorization), (BOOKMARK_HEADER, &head.bookmark), (STALENESS_HEADER, &head.staleness), (AS_OF_HEADER, &head.as_of)];
        match known.iter().find(|(h, _)| h.eq_ignore_ascii_case(name)) {
            Some((_, value)) => (*value).clone(),
            None => self.raw.headers().get(name).ok().flatten(),
        }
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        url_query_param(&self.head.url, name)
    }

    /// The body as a stream, once: None without a body, or once it was taken. (The JS entry
    /// reads only POST bodies; the routes that stream theirs are PUTs.)
    pub fn take_body(&self) -> Option<web_sys::ReadableStream> {
        match self.body.take() {
            BodyState::Unread => self.raw.body(),
            BodyState::Prefetched(_) | BodyState::Taken => None,
        }
    }

    /// The whole body, at most `LIMITS.max_body_bytes` (`PAYLOAD_TOO_LARGE` past it). A request
    /// without a body reads as an empty one (the body parsers say what is missing).
    pub async fn body(&self) -> Result<Vec<u8>, ApiError> {
        let stream = match self.body.take() {
            BodyState::Prefetched(bytes) if bytes.len() > LIMITS.max_body_bytes => return Err(too_large()),
            BodyState::Prefetched(bytes) => return Ok(bytes),
            BodyState::Taken => return Ok(Vec::new()),
            BodyState::Unread => self.raw.body(),
        };
        let Some(stream) = stream else { return Ok(Vec::new()) };
        let declared = self.raw.headers().get("content-length").ok().flatten().map(|len| len.trim().parse::<usize>().ok());
        match declared {
            Some(Some(n)) if n <= LIMITS.max_body_bytes => {
                // The runtime holds the body to its declared length, so one read takes it.
                let buffer = JsFuture::from(self.raw.array_buffer().map_err(reading_error)?).await.map_err(reading_error)?;
                Ok(js_sys::Uint8Array::new(&buffer).to_vec())
            }
            Some(_) => drain(stream, true).await,
            None => drain(stream, false).await,
        }
    }
}

/// Reads a body of unknown or excessive length in chunks, keeping no bytes past the limit
/// but reading to the end: a client still sending when the answer goes out sees a reset
/// connection, not the 413.
async fn drain(stream: web_sys::ReadableStream, over_from_start: bool) -> Result<Vec<u8>, ApiError> {
    let mut stream = ByteStream::from(stream);
    let mut body = Vec::new();
    let mut over = over_from_start;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("reading body: {e}")))?;
        if !over && body.len() + chunk.len() > LIMITS.max_body_bytes {
            over = true;
            body = Vec::new();
        }
        if !over {
            body.extend_from_slice(&chunk);
        }
    }
    if over {
        return Err(too_large());
    }
    Ok(body)
}

fn too_large() -> ApiError {
    ApiError::new(413, "PAYLOAD_TOO_LARGE", format!("request bodies may be at most {} bytes (BODY_SIZE limit)", LIMITS.max_body_bytes))
}

fn reading_error(e: wasm_bindgen::JsValue) -> ApiError {
    ApiError::bad_request("INVALID_REQUEST", format!("reading body: {}", e.as_string().unwrap_or_else(|| format!("{e:?}"))))
}

/// The path of a serialized absolute URL, without parsing it (parsing with the `url` crate
/// cost a twentieth of a warm request): the first `/` after `//` begins the path, and `?` and
/// `#` are percent-encoded within it.
fn url_path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let Some(start) = url[after_scheme..].find('/').map(|i| after_scheme + i) else { return "/" };
    let path = &url[start..];
    &path[..path.find(['?', '#']).unwrap_or(path.len())]
}

/// The first value of query parameter `name`, decoded.
fn url_query_param(url: &str, name: &str) -> Option<String> {
    let url = &url[..url.find('#').unwrap_or(url.len())];
    let query = url.split_once('?').map_or("", |(_, q)| q);
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_parameters_read_as_the_url_crate_reads_them() {
        for url in [
            "http://127.0.0.1:8787/",
            "https://example.com/v1/db/a/query",
            "https://example.com/v1/db/a/export?as_of=tw0000000000000002&format=sql",
            "https://example.com/v1/db?after=b%20c&limit=5&after=d",
            "https://example.com/a%3F%23%2Fb?c=%3D1#frag?x=2",
            "https://example.com?x=1",
            "https://example.com#f",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert_eq!(url_path(url), parsed.path(), "{url}");
            for name in ["as_of", "format", "after", "limit", "c", "x", "missing"] {
                let expected = parsed.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
                assert_eq!(url_query_param(url, name), expected, "{url} {name}");
            }
        }
    }
}
