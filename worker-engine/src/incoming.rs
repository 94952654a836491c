//! The HTTP request as the Worker received it, read only as far as its route needs.
//!
//! `worker::Request` reads the method, the URL and `request.cf` (which the runtime builds as a
//! new JS object on each read) when it is made, and its body reader crosses into JS twice per
//! chunk: together about a fifth of a warm point select's time in a CPU profile. Most routes
//! need a header or two and a small body known in length, read with one `arrayBuffer()`;
//! the routes that stream their body (imports and upload parts) take it once with
//! [`Incoming::take_body`].

use std::cell::Cell;

use wasm_bindgen_futures::JsFuture;
use worker::{url, web_sys, ByteStream, Method};

use crate::wire::{ApiError, LIMITS};

pub struct Incoming {
    raw: web_sys::Request,
    /// The URL as the runtime serialized it (WHATWG): absolute, its path percent-encoded.
    url: String,
    /// Whether the body was taken (it can be read once).
    body_taken: Cell<bool>,
}

impl Incoming {
    pub fn new(raw: web_sys::Request) -> Self {
        let url = raw.url();
        Incoming { raw, url, body_taken: Cell::new(false) }
    }

    pub fn method(&self) -> Method {
        Method::from(self.raw.method())
    }

    pub fn path(&self) -> &str {
        url_path(&self.url)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.raw.headers().get(name).ok().flatten()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        url_query_param(&self.url, name)
    }

    /// The body as a stream, once: None without a body, or once it was taken.
    pub fn take_body(&self) -> Option<web_sys::ReadableStream> {
        if self.body_taken.replace(true) {
            return None;
        }
        self.raw.body()
    }

    /// The whole body, at most `LIMITS.max_body_bytes` (`PAYLOAD_TOO_LARGE` past it). A request
    /// without a body reads as an empty one (the body parsers say what is missing).
    pub async fn body(&self) -> Result<Vec<u8>, ApiError> {
        if self.body_taken.get() || self.raw.body().is_none() {
            return Ok(Vec::new());
        }
        let declared = self.header("content-length").map(|len| len.trim().parse::<usize>().ok());
        match declared {
            Some(Some(n)) if n <= LIMITS.max_body_bytes => {
                // The runtime holds the body to its declared length, so one read takes it.
                self.body_taken.set(true);
                let buffer = JsFuture::from(self.raw.array_buffer().map_err(reading_error)?).await.map_err(reading_error)?;
                Ok(js_sys::Uint8Array::new(&buffer).to_vec())
            }
            Some(_) => self.drain(true).await,
            None => self.drain(false).await,
        }
    }

    /// Reads a body of unknown or excessive length in chunks, keeping no bytes past the limit
    /// but reading to the end: a client still sending when the answer goes out sees a reset
    /// connection, not the 413.
    async fn drain(&self, over_from_start: bool) -> Result<Vec<u8>, ApiError> {
        let Some(mut stream) = self.take_body().map(ByteStream::from) else { return Ok(Vec::new()) };
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
            return Err(ApiError::new(
                413,
                "PAYLOAD_TOO_LARGE",
                format!("request bodies may be at most {} bytes (BODY_SIZE limit)", LIMITS.max_body_bytes),
            ));
        }
        Ok(body)
    }
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
