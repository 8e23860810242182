//! Conditional and partial downloads (RFC 9110 §13–14), as pure functions over header values:
//! `If-None-Match` against the asset's strong ETag, and one byte range from `Range`.
//!
//! One range is served; a request for several gets the whole asset with 200, which RFC 9110
//! allows (a server may ignore `Range`) and spares clients a multipart body. So does a `Range`
//! that is not a `bytes=` range we can read, or whose `If-Range` names another version.

/// What to send of an asset of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// All of it, with 200.
    Full,
    /// Bytes `start..=end`, with 206 and `Content-Range: bytes start-end/len`.
    Partial { start: u64, end: u64 },
    /// Nothing: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses a `Range` header value for an asset of `len` bytes.
pub fn select(range: Option<&str>, len: u64) -> Selection {
    let Some(range) = range else {
        return Selection::Full;
    };
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Selection::Full;
    };
    if spec.contains(',') {
        return Selection::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Selection::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            if !digits(last) {
                return Selection::Full;
            }
            let n: u64 = last.parse().unwrap_or(u64::MAX);
            if n == 0 || len == 0 {
                return Selection::Unsatisfiable;
            }
            Selection::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            }
        }
        // bytes=A- or bytes=A-B.
        (false, _) => {
            if !digits(first) || (!last.is_empty() && !digits(last)) {
                return Selection::Full;
            }
            let Ok(start) = first.parse::<u64>() else {
                return Selection::Unsatisfiable;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                last.parse::<u64>().unwrap_or(u64::MAX)
            };
            if end < start {
                // Syntactically invalid (RFC 9110 §14.1.1): ignore the header.
                return Selection::Full;
            }
            if start >= len {
                return Selection::Unsatisfiable;
            }
            Selection::Partial {
                start,
                end: end.min(len - 1),
            }
        }
        (true, true) => Selection::Full,
    }
}

/// Whether `If-None-Match` matches the strong ETag `etag` (quoted): `*` or any listed tag,
/// compared weakly as RFC 9110 §13.1.2 says (a `W/` prefix is ignored).
pub fn none_match(if_none_match: Option<&str>, etag: &str) -> bool {
    let Some(value) = if_none_match else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Whether a `Range` may be honoured given `If-Range`: only when it is absent or names the
/// current version by its strong ETag (a date never matches: our validator is the ETag).
pub fn if_range_allows(if_range: Option<&str>, etag: &str) -> bool {
    match if_range {
        None => true,
        Some(v) => v.trim() == etag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_range_or_a_foreign_unit_selects_everything() {
        assert_eq!(select(None, 10), Selection::Full);
        assert_eq!(select(Some("items=0-1"), 10), Selection::Full);
        assert_eq!(select(Some("bytes=abc"), 10), Selection::Full);
        assert_eq!(select(Some("bytes=5-2"), 10), Selection::Full);
    }

    #[test]
    fn a_closed_range_is_clamped_to_the_asset() {
        assert_eq!(
            select(Some("bytes=0-3"), 10),
            Selection::Partial { start: 0, end: 3 }
        );
        assert_eq!(
            select(Some("bytes=4-99"), 10),
            Selection::Partial { start: 4, end: 9 }
        );
        assert_eq!(
            select(Some("bytes=7-"), 10),
            Selection::Partial { start: 7, end: 9 }
        );
    }

    #[test]
    fn a_suffix_range_takes_the_last_bytes() {
        assert_eq!(
            select(Some("bytes=-3"), 10),
            Selection::Partial { start: 7, end: 9 }
        );
        assert_eq!(
            select(Some("bytes=-30"), 10),
            Selection::Partial { start: 0, end: 9 }
        );
    }

    #[test]
    fn a_range_past_the_end_or_of_nothing_is_unsatisfiable() {
        assert_eq!(select(Some("bytes=10-"), 10), Selection::Unsatisfiable);
        assert_eq!(select(Some("bytes=-0"), 10), Selection::Unsatisfiable);
        assert_eq!(select(Some("bytes=0-"), 0), Selection::Unsatisfiable);
        assert_eq!(
            select(Some("bytes=99999999999999999999999-"), 10),
            Selection::Unsatisfiable
        );
    }

    #[test]
    fn several_ranges_get_the_whole_asset() {
        assert_eq!(select(Some("bytes=0-1,4-5"), 10), Selection::Full);
    }

    #[test]
    fn if_none_match_matches_the_tag_a_list_or_a_star() {
        let etag = "\"abc\"";
        assert!(none_match(Some("\"abc\""), etag));
        assert!(none_match(Some("\"x\", W/\"abc\""), etag));
        assert!(none_match(Some("*"), etag));
        assert!(!none_match(Some("\"x\""), etag));
        assert!(!none_match(None, etag));
    }

    #[test]
    fn if_range_allows_the_range_only_for_the_current_tag() {
        assert!(if_range_allows(None, "\"a\""));
        assert!(if_range_allows(Some("\"a\""), "\"a\""));
        assert!(!if_range_allows(Some("\"b\""), "\"a\""));
        assert!(!if_range_allows(
            Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            "\"a\""
        ));
    }
}
