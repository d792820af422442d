//! The web app, built from web/ by build.rs and embedded in the binary
//! (the `web` feature, on by default): lookup with SPA fallback, MIME types
//! and caching headers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use include_dir::Dir;

#[cfg(feature = "web")]
static WEB: Dir<'static> = include_dir::include_dir!("$OUT_DIR/web");
/// Built without the `web` feature: no app, and a page that says so.
#[cfg(not(feature = "web"))]
static WEB: Dir<'static> = Dir::new("", &[]);

/// Serves `path` from the embedded app. Paths without a file extension
/// that name no file get index.html, so client-side routes and `/?room=`
/// links work.
pub fn serve(path: &str) -> Response {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let file = WEB.get_file(path).or_else(|| {
        let last = path.rsplit('/').next().unwrap_or(path);
        (!last.contains('.'))
            .then(|| WEB.get_file("index.html"))
            .flatten()
    });
    let Some(file) = file else {
        if cfg!(not(feature = "web")) && (path == "index.html" || !path.contains('.')) {
            return (
                StatusCode::NOT_FOUND,
                "this host was built without the web app (cargo feature `web`); \
                 signaling, TURN and policies work, build with default features to serve the app",
            )
                .into_response();
        }
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let name = file.path().to_string_lossy();
    let mime = if name.ends_with(".webmanifest") {
        "application/manifest+json".to_string()
    } else {
        mime_guess::from_path(&*name)
            .first_or_octet_stream()
            .essence_str()
            .to_string()
    };
    let mime = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime
    };
    // Vite puts content hashes in file names under assets/: those never
    // change. Everything else (index.html, the service worker, the
    // manifest) must be revalidated so updates reach users.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = file.contents().into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "web")]
    fn index_and_fallback() {
        let r = serve("/");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(serve("/some/route").status(), StatusCode::OK);
        assert_eq!(serve("/missing.js").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    #[cfg(not(feature = "web"))]
    fn without_the_app_pages_say_so() {
        let r = serve("/");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("/missing.js").status(), StatusCode::NOT_FOUND);
    }
}
