//! The web console: a page for people (sign in with an API key, list and search jobs, upload a
//! CSV, follow a job live, download its assets, cancel it). Its files are plain HTML, CSS and
//! JavaScript under `console/`, compiled into the binary, so nothing is built or fetched at run
//! time and the page works offline. It reads everything through the public API with the key
//! the person typed: tenant isolation stays the API's.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline script, no `eval`, no framing), `nosniff` and `Referrer-Policy`, so
//! that a value from a job that slipped into the markup still could not run.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");
const ICON: &str = include_str!("console/icon.svg");

/// The policy of every console response. `connect-src 'self'` covers the API calls and the
/// event stream; downloads go through `blob:` URLs made by the script, which navigation to an
/// `<a download>` does not need a directive for.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change only with the binary; `no-cache` revalidates rather than re-downloads
    // only in theory (there is no validator), but they are small and an upgrade shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    page("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    page("text/css; charset=utf-8", STYLE)
}

async fn icon() -> Response {
    page("image/svg+xml", ICON)
}

/// The console's routes, merged into the API's router outside `/api/v1`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route("/console/icon.svg", get(icon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_no_inline_script_or_style_and_nothing_from_elsewhere() {
        let lower = INDEX.to_ascii_lowercase();
        assert!(!lower.contains("<script>"), "inline script");
        assert!(!lower.contains("<style"), "inline style");
        assert!(!lower.contains(" style="), "style attribute");
        // An event-handler attribute: ` on` + letters + `=`.
        for (i, _) in lower.match_indices(" on") {
            let rest = &lower[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            assert!(
                name_len == 0 || !rest[name_len..].starts_with('='),
                "event handler attribute at byte {i}"
            );
        }
        assert!(!lower.contains("http://") && !lower.contains("https://"));
    }

    #[test]
    fn the_script_never_writes_markup() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!SCRIPT.contains(forbidden), "{forbidden} in app.js");
        }
    }
}
