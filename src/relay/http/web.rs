//! The browser client, embedded in the binary: `GET /` serves the page and
//! its dependency-free JS module from `web/`; `GET /dashboard` the relay's
//! dashboard (fed by `/stats/events`).

/// A static file: content type and body.
pub(crate) type Asset = (&'static str, &'static [u8]);

/// The embedded file served at `path`, if any.
pub(crate) fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/index.html" => Some((
            "text/html; charset=utf-8",
            include_bytes!("../../../web/index.html"),
        )),
        "/client.js" => Some((
            "text/javascript; charset=utf-8",
            include_bytes!("../../../web/client.js"),
        )),
        "/dashboard" | "/dashboard.html" => Some((
            "text/html; charset=utf-8",
            include_bytes!("../../../web/dashboard.html"),
        )),
        "/dashboard.js" => Some((
            "text/javascript; charset=utf-8",
            include_bytes!("../../../web/dashboard.js"),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serves_the_page_and_module() {
        let (ct, body) = super::asset("/").unwrap();
        assert!(ct.starts_with("text/html"));
        assert!(!body.is_empty());
        assert!(super::asset("/client.js").is_some());
        assert!(super::asset("/dashboard").is_some());
        assert!(super::asset("/dashboard.js").is_some());
        assert!(super::asset("/nope").is_none());
    }
}
