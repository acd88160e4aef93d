//! `http.cors_origins`: the web origins (Control Center's page) allowed to
//! read the API from a browser.

use super::Reader;

/// Each entry must be one exact origin as a browser sends it in `Origin`:
/// `scheme://host[:port]`, lower-case scheme and host, no path, no
/// wildcard. Exact strings keep the check a plain comparison: a pattern
/// language here is how CORS allowlists get bypassed.
pub(super) fn read_cors_origins(r: &mut Reader) -> Vec<String> {
    let mut out = Vec::new();
    for origin in r.list("http.cors_origins") {
        match origin_problem(&origin) {
            None => {
                if !out.contains(&origin) {
                    out.push(origin);
                }
            }
            Some(p) => r.err(
                "http.cors_origins",
                format!("{origin:?} is not allowed: {p}; use exact origins like \"https://control-center.example\" or \"http://127.0.0.1:3000\""),
            ),
        }
    }
    out
}

fn origin_problem(origin: &str) -> Option<&'static str> {
    if origin == "*" || origin.contains('*') {
        return Some("wildcards are not accepted");
    }
    if origin == "null" {
        return Some("the opaque origin \"null\" is any sandboxed page");
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Some("it has no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return Some("the scheme must be http or https");
    }
    if rest.is_empty() {
        return Some("it has no host");
    }
    if rest.contains(['/', '?', '#']) {
        return Some("an origin has no path, query or trailing slash");
    }
    if rest.contains('@') {
        return Some("an origin has no user info");
    }
    if rest.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("browsers send origins in lower case");
    }
    if let Some((_, port)) = rest.rsplit_once(':').filter(|_| !rest.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Some("the port must be a number up to 65535");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn origins() {
        for ok in [
            "http://127.0.0.1:3000",
            "https://control-center.example",
            "http://[::1]:8080",
            "http://localhost",
        ] {
            assert_eq!(super::origin_problem(ok), None, "{ok}");
        }
        for bad in [
            "*",
            "https://*.example",
            "null",
            "control-center.example",
            "ftp://x.example",
            "https://x.example/",
            "https://x.example/app",
            "https://X.example",
            "https://x.example:99999",
            "https://user@x.example",
            "https://",
        ] {
            assert!(super::origin_problem(bad).is_some(), "{bad}");
        }
    }
}
