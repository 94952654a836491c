//! Which endpoint a request's method and path name.

use worker::Method;

use crate::hrana::HranaRequest;
use crate::wire::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /`
    Describe,
    Query,
    Batch,
    Exec,
    Stats,
    /// `GET .../v2` or `.../v3`: Hrana version probe.
    HranaVersion(u8),
    /// `POST .../v2/pipeline` or `.../v3/pipeline`; `POST .../v3/cursor`.
    Hrana(HranaRequest),
    /// `GET .../history[?at=]`: the history window, and the commit at a time.
    History,
    /// `POST .../restore`: make a past commit's state the current one.
    Restore,
    /// `POST .../fork`: a new database starting from a commit of this one.
    Fork,
    /// `GET .../export[?as_of=]`: the SQLite file of a commit.
    Export,
    /// `PUT .../import[?replace=true]`: a SQLite file becomes the database's state.
    Import,
    /// `GET /v1/db`: the databases, paged.
    ListDatabases,
    /// `GET /v1/db/{name}`: one database's size, newest commit, checkpoint and history.
    Info,
    /// `DELETE /v1/db/{name}[?purge=true]`: the database becomes empty (restorable, or purged).
    Delete,
    /// `.../uploads[/{id}[/{part} | /complete]]`: an import in several requests.
    Upload(UploadStep),
}

/// What a request of an upload session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStep {
    /// `POST .../uploads`
    Begin,
    /// `PUT .../uploads/{id}/{part}`
    Part,
    /// `GET .../uploads/{id}`
    Status,
    /// `POST .../uploads/{id}/complete`
    Complete,
    /// `DELETE .../uploads/{id}`
    Abort,
}

/// The session (and part) an upload request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    pub id: String,
    pub part: Option<u32>,
}

impl Endpoint {
    fn method(self) -> Method {
        match self {
            Endpoint::Import | Endpoint::Upload(UploadStep::Part) => Method::Put,
            Endpoint::Delete | Endpoint::Upload(UploadStep::Abort) => Method::Delete,
            Endpoint::Upload(UploadStep::Status) => Method::Get,
            Endpoint::Upload(UploadStep::Begin | UploadStep::Complete) => Method::Post,
            Endpoint::Describe
            | Endpoint::Stats
            | Endpoint::HranaVersion(_)
            | Endpoint::History
            | Endpoint::Export
            | Endpoint::ListDatabases
            | Endpoint::Info => Method::Get,
            Endpoint::Query | Endpoint::Batch | Endpoint::Exec | Endpoint::Hrana(_) | Endpoint::Restore | Endpoint::Fork => {
                Method::Post
            }
        }
    }

}

/// What a request asks for: an endpoint, and the database it names (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub endpoint: Endpoint,
    pub database: Option<String>,
    pub upload: Option<UploadTarget>,
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(404, "NOT_FOUND", message)
}

/// True if the path is one libSQL clients use, so that even its routing errors take
/// Hrana's shape.
pub fn looks_like_hrana(path: &str) -> bool {
    path.split('/').any(|s| matches!(s, "v2" | "v3" | "v3-protobuf"))
}

/// Finds the endpoint a method and path name. Database names are validated by the caller.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut upload = None;
    let (endpoint, database) = match segments.as_slice() {
        [""] => (Endpoint::Describe, None),
        ["v1", "db"] => (Endpoint::ListDatabases, None),
        ["v1", "db", name, rest @ ..] => {
            let endpoint = match rest {
                ["uploads"] => Endpoint::Upload(UploadStep::Begin),
                ["uploads", id, rest @ ..] => {
                    let (step, part) = match rest {
                        [] if *method == Method::Delete => (UploadStep::Abort, None),
                        [] => (UploadStep::Status, None),
                        ["complete"] => (UploadStep::Complete, None),
                        [part] => match part.parse::<u32>() {
                            Ok(n) => (UploadStep::Part, Some(n)),
                            Err(_) => return Err(not_found(format!("no route for {path}: parts are numbered from 0"))),
                        },
                        _ => return Err(not_found(format!("no route for {path}"))),
                    };
                    upload = Some(UploadTarget { id: id.to_string(), part });
                    Endpoint::Upload(step)
                }
                ["query"] => Endpoint::Query,
                ["batch"] => Endpoint::Batch,
                ["exec"] => Endpoint::Exec,
                ["stats"] => Endpoint::Stats,
                ["history"] => Endpoint::History,
                ["restore"] => Endpoint::Restore,
                ["fork"] => Endpoint::Fork,
                ["export"] => Endpoint::Export,
                ["import"] => Endpoint::Import,
                ["v2"] => Endpoint::HranaVersion(2),
                ["v3"] => Endpoint::HranaVersion(3),
                ["v2" | "v3", "pipeline"] => Endpoint::Hrana(HranaRequest::Pipeline),
                ["v3-protobuf", ..] => {
                    return Err(not_found("Hrana's protobuf encoding is not supported; use JSON (v2 or v3)"))
                }
                ["v3", "cursor"] => Endpoint::Hrana(HranaRequest::Cursor),
                [] if *method == Method::Delete => Endpoint::Delete,
                [] if *method == Method::Get || *method == Method::Head => Endpoint::Info,
                // A libSQL client given .../v1/db/<name> without the trailing slash.
                ["pipeline"] | [] => {
                    return Err(not_found(format!(
                        "no route for {path}: a libSQL client URL must name the database and end with '/': http://<host>/v1/db/<name>/"
                    )))
                }
                _ => return Err(not_found(format!("no route for {path}"))),
            };
            (endpoint, Some(name.to_string()))
        }
        _ => return Err(not_found(format!("no route for {path}"))),
    };
    let wanted = endpoint.method();
    let allowed = wanted == *method || (wanted == Method::Get && *method == Method::Head);
    if !allowed {
        let name = match wanted {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            _ => "POST",
        };
        return Err(ApiError::new(405, "METHOD_NOT_ALLOWED", format!("this route accepts {name} only")));
    }
    Ok(Route { endpoint, database, upload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_database_name_reaches_its_routes() {
        // Names that look like route words are databases like any other.
        for name in ["app", "v2", "v3", "query", "stats"] {
            let r = route(&Method::Post, &format!("/v1/db/{name}/query")).unwrap();
            assert_eq!((r.endpoint, r.database.as_deref()), (Endpoint::Query, Some(name)));
            let r = route(&Method::Post, &format!("/v1/db/{name}/v2/pipeline")).unwrap();
            assert_eq!((r.endpoint, r.database.as_deref()), (Endpoint::Hrana(HranaRequest::Pipeline), Some(name)));
        }
        assert_eq!(route(&Method::Post, "/v1/db/app/v3/cursor").unwrap().endpoint, Endpoint::Hrana(HranaRequest::Cursor));
        assert_eq!(route(&Method::Get, "/v1/db/v3/v3").unwrap().endpoint, Endpoint::HranaVersion(3));
        assert_eq!(route(&Method::Get, "/v1/db/app/query").unwrap_err().status, 405);
        assert_eq!(route(&Method::Post, "/v1/db/app").unwrap_err().status, 404);
        assert_eq!(route(&Method::Delete, "/v1/db/app").unwrap().endpoint, Endpoint::Delete);
        assert_eq!(route(&Method::Delete, "/v1/db/app/").unwrap().endpoint, Endpoint::Delete);
        assert_eq!(route(&Method::Delete, "/v1/db/app/query").unwrap_err().status, 405);
        assert_eq!(route(&Method::Post, "/v1/db/app/v3-protobuf/pipeline").unwrap_err().status, 404);
        assert_eq!(route(&Method::Get, "/").unwrap().endpoint, Endpoint::Describe);
        assert_eq!(route(&Method::Get, "/v1/db").unwrap().endpoint, Endpoint::ListDatabases);
        assert_eq!(route(&Method::Get, "/v1/db/").unwrap().endpoint, Endpoint::ListDatabases);
        assert_eq!(route(&Method::Get, "/v1/db/app").unwrap().endpoint, Endpoint::Info);
        assert_eq!(route(&Method::Post, "/v1/db").unwrap_err().status, 405);
    }

    #[test]
    fn upload_sessions_have_a_route_per_step() {
        let id = "0001700000000000-00ff";
        let step = |m: Method, p: &str| route(&m, p).map(|r| (r.endpoint, r.upload));
        assert_eq!(step(Method::Post, "/v1/db/app/uploads").unwrap(), (Endpoint::Upload(UploadStep::Begin), None));
        let target = |part| Some(UploadTarget { id: id.to_string(), part });
        assert_eq!(step(Method::Put, &format!("/v1/db/app/uploads/{id}/7")).unwrap(), (Endpoint::Upload(UploadStep::Part), target(Some(7))));
        assert_eq!(step(Method::Get, &format!("/v1/db/app/uploads/{id}")).unwrap(), (Endpoint::Upload(UploadStep::Status), target(None)));
        assert_eq!(step(Method::Delete, &format!("/v1/db/app/uploads/{id}")).unwrap(), (Endpoint::Upload(UploadStep::Abort), target(None)));
        assert_eq!(
            step(Method::Post, &format!("/v1/db/app/uploads/{id}/complete")).unwrap(),
            (Endpoint::Upload(UploadStep::Complete), target(None))
        );
        assert_eq!(route(&Method::Put, &format!("/v1/db/app/uploads/{id}/-1")).unwrap_err().status, 404);
        assert_eq!(route(&Method::Post, &format!("/v1/db/app/uploads/{id}/3")).unwrap_err().status, 405);
    }
}
