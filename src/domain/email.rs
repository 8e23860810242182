//! Pure e-mail rules: domain normalization, address syntax, role and
//! disposable detection, the verdict that combines individual checks, and
//! inference of a company's address pattern from addresses already known.
//!
//! Nothing here performs I/O; the network-facing checks (MX, SMTP) live in
//! `adapters` and only report a [`Check`] that [`classify`] folds in.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Overall verdict for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "Overall verdict for an address: `verified` (every check passed), `risky` (deliverable but disposable, a role account, a catch-all server or an implicit MX), `invalid` (a check failed definitely; such rows are not delivered), `unknown` (a network check did not finish)."
)]
#[serde(rename_all = "snake_case")]
pub enum EmailStatus {
    Verified,
    Risky,
    Invalid,
    Unknown,
}

/// Outcome of one individual check.
///
/// Meaning per field of [`EmailChecks`]:
/// - `syntax`: `Pass` parsed, `Fail` did not parse.
/// - `disposable`: `Fail` = the domain IS a disposable provider (flagged), `Pass` = not.
/// - `role`: `Fail` = the local part IS a role account (flagged), `Pass` = personal.
/// - `mx`: `Pass` = MX records found, `Warn` = only an implicit MX (A/AAAA fallback),
///   `Fail` = the domain cannot receive mail, `Unknown` = lookup did not finish.
/// - `smtp`: `Pass` = RCPT accepted, `Warn` = accepted but the server is catch-all,
///   `Fail` = RCPT rejected, `Unknown` = probe did not finish, `Skipped` = not probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(
    description = "Outcome of one check. For `disposable` and `role`, `fail` means the address IS disposable / a role account. `warn`: `mx` only an implicit MX (A/AAAA fallback), `smtp` accepted by a catch-all server. `unknown`: the lookup or probe did not finish. `skipped`: not run."
)]
pub enum Check {
    Pass,
    Fail,
    Warn,
    Unknown,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(description = "The individual checks behind `email_status`.")]
pub struct EmailChecks {
    pub syntax: Check,
    pub disposable: Check,
    pub role: Check,
    pub mx: Check,
    pub smtp: Check,
}

/// Why a string is not a usable domain name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("the domain is empty")]
    Empty,
    #[error("the domain {0:?} cannot be converted to ASCII (IDNA)")]
    Idna(String),
    #[error("the domain is {0} characters long; the limit is 253")]
    TooLong(usize),
    #[error("the label {0:?} is longer than 63 characters")]
    LabelTooLong(String),
    #[error("the domain {0:?} has an empty label (two dots in a row or a leading dot)")]
    EmptyLabel(String),
    #[error("the domain {0:?} needs at least one dot (e.g. example.com)")]
    NoDot(String),
    #[error("the label {0:?} may only contain letters, digits and hyphens")]
    InvalidCharacter(String),
    #[error("the label {0:?} may not start or end with a hyphen")]
    HyphenAtEdge(String),
    #[error("the top-level domain {0:?} cannot be all digits")]
    NumericTld(String),
}

/// Why a string is not an address we can check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SyntaxError {
    #[error("the address is empty")]
    Empty,
    #[error("the address has no '@'")]
    MissingAt,
    #[error("the address has more than one '@'")]
    MultipleAt,
    #[error("quoted local parts (\"...\"@domain) are not supported")]
    QuotedLocalPart,
    #[error("the part before '@' is empty")]
    EmptyLocalPart,
    #[error("the part before '@' is {0} octets long; the limit is 64")]
    LocalPartTooLong(usize),
    #[error("the part before '@' may not start or end with a dot, or contain two dots in a row")]
    MisplacedDot,
    #[error("the character {0:?} is not allowed before '@'")]
    InvalidLocalCharacter(char),
    #[error("the address is {0} octets long; the limit is 254")]
    TooLong(usize),
    #[error("invalid domain: {0}")]
    Domain(#[from] DomainError),
}

/// An address split into its parts, with the domain in canonical ASCII form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEmail {
    /// Local part, lowercased (see [`parse_email`] for why).
    pub local: String,
    /// Canonical ASCII (punycode) domain.
    pub domain: String,
    /// `local@domain`.
    pub address: String,
}

impl ParsedEmail {
    /// A non-ASCII local part can only be sent to a server that offers
    /// SMTPUTF8 (RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }
}

/// Turns user input that names a company domain — possibly a URL such as
/// `https://www.Example.com/about` — into the bare ASCII domain `example.com`.
pub fn normalize_domain(input: &str) -> Result<String, DomainError> {
    let mut s = input.trim();
    for scheme in ["https://", "http://"] {
        // `get`, not an index: the input is arbitrary Unicode, and the scheme's length can fall
        // inside a multi-byte character (`日本語.jp`), where slicing would panic.
        if let Some(rest) = s
            .get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .and_then(|_| s.get(scheme.len()..))
        {
            s = rest;
            break;
        }
    }
    if let Some(end) = s.find(['/', '?', '#']) {
        s = &s[..end];
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            s = host;
        }
    }
    let ascii = canonical_host(s)?;
    // `www.` names a web host, not the company's mail domain; but keep it when
    // stripping would leave a bare TLD (`www.com`).
    match ascii.strip_prefix("www.") {
        Some(rest) if rest.contains('.') => Ok(rest.to_string()),
        _ => Ok(ascii),
    }
}

/// The Unicode form (U-labels) of a canonical ASCII domain, for people to read: `xn--bcher-kva.de`
/// reads `bücher.de`. A domain with no valid Unicode form is shown as it is.
pub fn display_domain(ascii: &str) -> String {
    let (unicode, result) = idna::domain_to_unicode(ascii);
    if result.is_ok() && !unicode.is_empty() {
        unicode
    } else {
        ascii.to_owned()
    }
}

/// Validates and canonicalizes a host name without any URL handling; used for
/// the domain of an address, where `www.` is significant and must stay.
fn canonical_host(input: &str) -> Result<String, DomainError> {
    let s = input.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(DomainError::Empty);
    }
    let ascii = idna::domain_to_ascii(s).map_err(|_| DomainError::Idna(s.to_string()))?;
    if ascii.is_empty() {
        return Err(DomainError::Empty);
    }
    if ascii.len() > 253 {
        return Err(DomainError::TooLong(ascii.len()));
    }
    if !ascii.contains('.') {
        return Err(DomainError::NoDot(ascii));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel(ascii.clone()));
        }
        if label.len() > 63 {
            return Err(DomainError::LabelTooLong(label.to_string()));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(DomainError::InvalidCharacter(label.to_string()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::HyphenAtEdge(label.to_string()));
        }
    }
    let tld = ascii.rsplit('.').next().unwrap_or_default();
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::NumericTld(tld.to_string()));
    }
    Ok(ascii)
}

/// RFC 5322 `atext` minus ALPHA/DIGIT.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// Parses an address with RFC 5321 length limits and an RFC 5322 dot-atom
/// local part, extended by RFC 6531 to UTF-8 (`êjness@iana.org`); the domain
/// comes back as its A-label, which is what DNS and the SMTP probe use.
///
/// The local part is lowercased: RFC 5321 allows case-sensitive mailboxes, but
/// no mainstream provider uses them, and a single canonical form is what lets
/// the system de-duplicate contacts.
pub fn parse_email(input: &str) -> Result<ParsedEmail, SyntaxError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SyntaxError::Empty);
    }
    if s.starts_with('"') {
        return Err(SyntaxError::QuotedLocalPart);
    }
    let (local, domain) = match s.split_once('@') {
        None => return Err(SyntaxError::MissingAt),
        Some((_, rest)) if rest.contains('@') => return Err(SyntaxError::MultipleAt),
        Some(parts) => parts,
    };
    if local.is_empty() {
        return Err(SyntaxError::EmptyLocalPart);
    }
    if local.len() > 64 {
        return Err(SyntaxError::LocalPartTooLong(local.len()));
    }
    // RFC 6531 extends atext with any non-ASCII UTF-8 character; controls and
    // spaces stay out (they could end an SMTP command line).
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || c == '.'
            || ATEXT_SPECIALS.contains(c)
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    };
    if let Some(c) = local.chars().find(|&c| !allowed(c)) {
        return Err(SyntaxError::InvalidLocalCharacter(c));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(SyntaxError::MisplacedDot);
    }
    let domain = canonical_host(domain)?;
    let local = local.to_ascii_lowercase();
    let address = format!("{local}@{domain}");
    if address.len() > 254 {
        return Err(SyntaxError::TooLong(address.len()));
    }
    Ok(ParsedEmail {
        local,
        domain,
        address,
    })
}

/// Local parts (already folded: lowercase, without `.`, `-`, `_`) that reach a
/// function or a team rather than a person.
const ROLE_ACCOUNTS: &[&str] = &[
    "abuse",
    "accounting",
    "accounts",
    "admin",
    "administrator",
    "all",
    "billing",
    "careers",
    "compliance",
    "contact",
    "contactus",
    "customercare",
    "customerservice",
    "donotreply",
    "enquiries",
    "enquiry",
    "feedback",
    "finance",
    "hello",
    "help",
    "helpdesk",
    "hostmaster",
    "hr",
    "info",
    "inquiries",
    "inquiry",
    "it",
    "jobs",
    "legal",
    "mail",
    "marketing",
    "media",
    "news",
    "newsletter",
    "noreply",
    "office",
    "orders",
    "partners",
    "postmaster",
    "press",
    "privacy",
    "recruiting",
    "recruitment",
    "root",
    "sales",
    "security",
    "service",
    "staff",
    "support",
    "sysadmin",
    "team",
    "tech",
    "webmaster",
];

/// True when the local part names a function (info@, sales@, no-reply@ …)
/// rather than a person; a `+tag` and the separators `.`, `-`, `_` are
/// ignored so that `no-reply+x` and `customer.service` are caught too.
pub fn is_role_account(local: &str) -> bool {
    let base = local.split('+').next().unwrap_or_default();
    let folded: String = base
        .chars()
        .filter(|c| !matches!(c, '.' | '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect();
    ROLE_ACCOUNTS.contains(&folded.as_str())
}

/// True when the domain, or any parent domain of it, is on mailchecker's list
/// of disposable providers.
///
/// `mailchecker::is_valid` judges a whole address and mixes two verdicts
/// (bad syntax, disposable domain) into one `false`, so probing it with a
/// fake address would misreport a domain it merely finds syntactically odd.
/// Instead we read its list via `mailchecker::blacklist()` once, and apply
/// the same rule it applies: every suffix of at least two labels is looked
/// up (so `x.33mail.com` is disposable because `33mail.com` is).
pub fn is_disposable(domain: &str) -> bool {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let list = LIST.get_or_init(|| mailchecker::blacklist().into_iter().collect());
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let mut suffix = domain.as_str();
    while suffix.contains('.') {
        if list.contains(suffix) {
            return true;
        }
        match suffix.split_once('.') {
            Some((_, rest)) => suffix = rest,
            None => break,
        }
    }
    false
}

/// Folds the individual checks into one verdict; a definite finding beats an
/// inconclusive one. Any definite failure (bad syntax, no mail server, a 5xx
/// "no such user") makes the address Invalid; otherwise a disposable domain or
/// a role account makes it Risky even when a network check could not finish
/// (what the address *is* does not depend on the network); otherwise an
/// unfinished network check makes it Unknown; otherwise an implicit MX or a
/// catch-all server makes it Risky; otherwise Verified.
/// `Skipped` never lowers a verdict: an address is Verified on syntax + MX
/// alone when SMTP probing is switched off.
pub fn classify(checks: &EmailChecks) -> EmailStatus {
    let flagged = |c: Check| matches!(c, Check::Fail | Check::Warn);
    if checks.syntax == Check::Fail || checks.mx == Check::Fail || checks.smtp == Check::Fail {
        return EmailStatus::Invalid;
    }
    if flagged(checks.disposable) || flagged(checks.role) {
        return EmailStatus::Risky;
    }
    if [checks.syntax, checks.mx, checks.smtp].contains(&Check::Unknown) {
        return EmailStatus::Unknown;
    }
    if checks.mx == Check::Warn || checks.smtp == Check::Warn {
        return EmailStatus::Risky;
    }
    EmailStatus::Verified
}

/// A way of building a local part from a person's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    FirstDotLast,
    FirstLast,
    FLast,
    FirstL,
    First,
    Last,
    FDotLast,
    LastDotFirst,
    FirstUnderscoreLast,
}

/// Used when nothing is known about a domain: `first.last` is the most common
/// corporate scheme.
pub const FALLBACK: Pattern = Pattern::FirstDotLast;
pub const FALLBACK_CONFIDENCE: f64 = 0.3;

impl Pattern {
    /// Every pattern, in tie-break preference order (most common schemes first).
    pub const ALL: [Pattern; 9] = [
        Pattern::FirstDotLast,
        Pattern::FirstLast,
        Pattern::FLast,
        Pattern::FirstL,
        Pattern::First,
        Pattern::Last,
        Pattern::FDotLast,
        Pattern::LastDotFirst,
        Pattern::FirstUnderscoreLast,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Pattern::FirstDotLast => "first.last",
            Pattern::FirstLast => "firstlast",
            Pattern::FLast => "flast",
            Pattern::FirstL => "firstl",
            Pattern::First => "first",
            Pattern::Last => "last",
            Pattern::FDotLast => "f.last",
            Pattern::LastDotFirst => "last.first",
            Pattern::FirstUnderscoreLast => "first_last",
        }
    }

    /// Builds `local@domain` for the person, or `None` when a name part the
    /// pattern needs is empty after cleaning (see [`clean_name`]).
    pub fn render(&self, first: &str, last: &str, domain: &str) -> Option<String> {
        let local = self.local_part(&clean_name(first), &clean_name(last))?;
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return None;
        }
        Some(format!("{local}@{domain}"))
    }

    fn local_part(&self, f: &str, l: &str) -> Option<String> {
        let need = |s: &str| (!s.is_empty()).then_some(());
        let initial = |s: &str| s.chars().next().map(String::from);
        Some(match self {
            Pattern::FirstDotLast => {
                need(f).and(need(l))?;
                format!("{f}.{l}")
            }
            Pattern::FirstLast => {
                need(f).and(need(l))?;
                format!("{f}{l}")
            }
            Pattern::FLast => {
                need(l)?;
                format!("{}{l}", initial(f)?)
            }
            Pattern::FirstL => {
                need(f)?;
                format!("{f}{}", initial(l)?)
            }
            Pattern::First => {
                need(f)?;
                f.to_string()
            }
            Pattern::Last => {
                need(l)?;
                l.to_string()
            }
            Pattern::FDotLast => {
                need(l)?;
                format!("{}.{l}", initial(f)?)
            }
            Pattern::LastDotFirst => {
                need(f).and(need(l))?;
                format!("{l}.{f}")
            }
            Pattern::FirstUnderscoreLast => {
                need(f).and(need(l))?;
                format!("{f}_{l}")
            }
        })
    }
}

/// Reduces a name to what mail admins typically keep: lowercase ASCII letters
/// and digits. Diacritics are folded (é→e, ß→ss, ø→o) and everything else —
/// spaces, hyphens, apostrophes — is dropped, so "O'Brien-Smith" becomes
/// "obriensmith" and "van der Berg" becomes "vanderberg".
pub fn clean_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if let Some(folded) = fold_latin(c) {
            out.push_str(folded);
        }
    }
    out
}

/// ASCII spelling of a lowercase Latin letter with a diacritic, or `None`
/// for anything that should simply be dropped.
fn fold_latin(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'ț' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// A real address of a named person at the domain being studied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownAddress {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternGuess {
    pub pattern: Pattern,
    /// In `0.0..=0.95`; see [`infer_pattern`].
    pub confidence: f64,
    /// How many known addresses the pattern reproduces.
    pub support: usize,
    /// How many known addresses were considered.
    pub total: usize,
}

/// Confidence never reaches certainty: a pattern inferred from samples can
/// always have exceptions (name clashes, legacy mailboxes).
const MAX_CONFIDENCE: f64 = 0.95;

/// Finds the pattern that reproduces most of the known addresses.
///
/// Each known address votes for every pattern whose rendering equals its
/// local part (a `+tag` is ignored); the pattern with most votes wins, ties
/// going to the earlier entry of [`Pattern::ALL`].
///
/// `confidence = (support / total) × (1 − 0.5^support)`, capped at 0.95:
/// the first factor is agreement among the samples, the second grows with
/// the amount of evidence (1 match → 0.5, 2 → 0.75, 3 → 0.875 …).
///
/// Returns `None` when `known` is empty or no pattern reproduces any
/// address; callers then fall back to [`FALLBACK`] at [`FALLBACK_CONFIDENCE`].
pub fn infer_pattern(known: &[KnownAddress]) -> Option<PatternGuess> {
    let mut support = [0usize; Pattern::ALL.len()];
    for k in known {
        let Some((local, _)) = k.email.trim().rsplit_once('@') else {
            continue;
        };
        let local = local.split('+').next().unwrap_or_default().to_lowercase();
        let (f, l) = (clean_name(&k.first_name), clean_name(&k.last_name));
        for (i, p) in Pattern::ALL.iter().enumerate() {
            if p.local_part(&f, &l).as_deref() == Some(local.as_str()) {
                support[i] += 1;
            }
        }
    }
    // `max_by_key` keeps the last maximum; iterating in reverse makes the
    // earliest (most preferred) pattern win ties.
    let (best, &best_support) = support.iter().enumerate().rev().max_by_key(|(_, &s)| s)?;
    if best_support == 0 {
        return None;
    }
    let total = known.len();
    let agreement = best_support as f64 / total as f64;
    let evidence = 1.0 - 0.5f64.powi(best_support.min(64) as i32);
    Some(PatternGuess {
        pattern: Pattern::ALL[best],
        confidence: (agreement * evidence).min(MAX_CONFIDENCE),
        support: best_support,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(
        syntax: Check,
        disposable: Check,
        role: Check,
        mx: Check,
        smtp: Check,
    ) -> EmailChecks {
        EmailChecks {
            syntax,
            disposable,
            role,
            mx,
            smtp,
        }
    }

    fn clean() -> EmailChecks {
        checks(
            Check::Pass,
            Check::Pass,
            Check::Pass,
            Check::Pass,
            Check::Pass,
        )
    }

    fn known(first: &str, last: &str, email: &str) -> KnownAddress {
        KnownAddress {
            first_name: first.into(),
            last_name: last.into(),
            email: email.into(),
        }
    }

    // --- normalize_domain ---

    #[test]
    fn a_url_is_reduced_to_its_bare_domain() {
        assert_eq!(
            normalize_domain("  https://www.Example.COM:8443/about?x=1#top ").unwrap(),
            "example.com"
        );
        assert_eq!(normalize_domain("HTTP://acme.io").unwrap(), "acme.io");
        assert_eq!(normalize_domain("acme.io/").unwrap(), "acme.io");
    }

    #[test]
    fn a_trailing_dot_is_dropped() {
        assert_eq!(normalize_domain("example.com.").unwrap(), "example.com");
    }

    #[test]
    fn www_is_kept_when_stripping_would_leave_a_bare_tld() {
        assert_eq!(normalize_domain("www.com").unwrap(), "www.com");
    }

    #[test]
    fn a_unicode_domain_becomes_punycode() {
        assert_eq!(normalize_domain("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(normalize_domain("MÜNCHEN.de").unwrap(), "xn--mnchen-3ya.de");
    }

    #[test]
    fn an_internationalised_domain_is_accepted_and_shown_in_unicode() {
        // The scheme check used to slice the first 8 bytes: inside `語` here, a panic.
        assert_eq!(normalize_domain("日本語.jp").unwrap(), "xn--wgv71a119e.jp");
        assert_eq!(
            normalize_domain("éééé.example").unwrap(),
            "xn--9caaaa.example"
        );
        assert_eq!(
            normalize_domain("https://www.日本語.jp/会社").unwrap(),
            "xn--wgv71a119e.jp"
        );
        assert_eq!(display_domain("xn--wgv71a119e.jp"), "日本語.jp");
        assert_eq!(display_domain("example.com"), "example.com");
        assert_eq!(display_domain("xn--zz.example"), "xn--zz.example");
    }

    #[test]
    fn a_domain_without_a_dot_is_rejected() {
        assert_eq!(
            normalize_domain("localhost"),
            Err(DomainError::NoDot("localhost".into()))
        );
    }

    #[test]
    fn an_empty_domain_is_rejected() {
        assert_eq!(normalize_domain("   "), Err(DomainError::Empty));
        assert_eq!(normalize_domain("https://"), Err(DomainError::Empty));
    }

    #[test]
    fn a_label_longer_than_63_characters_is_rejected() {
        let d = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            normalize_domain(&d),
            Err(DomainError::LabelTooLong(_))
        ));
        let ok = format!("{}.com", "a".repeat(63));
        assert_eq!(normalize_domain(&ok).unwrap(), ok);
    }

    #[test]
    fn a_domain_longer_than_253_characters_is_rejected() {
        let label = "a".repeat(60);
        let d = [label.as_str(); 5].join(".");
        assert_eq!(d.len(), 304);
        assert!(matches!(normalize_domain(&d), Err(DomainError::TooLong(_))));
    }

    #[test]
    fn labels_must_be_letters_digits_and_inner_hyphens() {
        assert!(matches!(
            normalize_domain("exa_mple.com"),
            Err(DomainError::InvalidCharacter(_)) | Err(DomainError::Idna(_))
        ));
        assert!(matches!(
            normalize_domain("-example.com"),
            Err(DomainError::HyphenAtEdge(_)) | Err(DomainError::Idna(_))
        ));
        assert!(matches!(
            normalize_domain("a..com"),
            Err(DomainError::EmptyLabel(_)) | Err(DomainError::Idna(_))
        ));
        assert_eq!(
            normalize_domain("my-company.co.uk").unwrap(),
            "my-company.co.uk"
        );
    }

    #[test]
    fn an_ip_address_is_not_a_domain() {
        assert!(matches!(
            normalize_domain("127.0.0.1"),
            Err(DomainError::NumericTld(_))
        ));
    }

    #[test]
    fn domain_errors_read_as_sentences() {
        assert_eq!(
            DomainError::NoDot("x".into()).to_string(),
            "the domain \"x\" needs at least one dot (e.g. example.com)"
        );
    }

    // --- parse_email ---

    #[test]
    fn a_plain_address_is_parsed_and_lowercased() {
        let p = parse_email(" Jane.Doe@Example.COM ").unwrap();
        assert_eq!(p.local, "jane.doe");
        assert_eq!(p.domain, "example.com");
        assert_eq!(p.address, "jane.doe@example.com");
    }

    #[test]
    fn the_domain_of_an_address_keeps_www() {
        assert_eq!(
            parse_email("a@www.example.com").unwrap().domain,
            "www.example.com"
        );
    }

    #[test]
    fn an_idn_domain_in_an_address_becomes_punycode() {
        assert_eq!(
            parse_email("hans@bücher.de").unwrap().address,
            "hans@xn--bcher-kva.de"
        );
    }

    #[test]
    fn atext_specials_are_allowed_in_the_local_part() {
        assert!(parse_email("a+tag@example.com").is_ok());
        assert!(parse_email("o'brien@example.com").is_ok());
        assert!(parse_email("x!#$%&*/=?^_`{|}~-@example.com").is_ok());
    }

    #[test]
    fn an_address_needs_exactly_one_at_sign() {
        assert_eq!(parse_email("example.com"), Err(SyntaxError::MissingAt));
        assert_eq!(parse_email("a@b@example.com"), Err(SyntaxError::MultipleAt));
        assert_eq!(parse_email(""), Err(SyntaxError::Empty));
    }

    #[test]
    fn an_empty_local_part_is_rejected() {
        assert_eq!(
            parse_email("@example.com"),
            Err(SyntaxError::EmptyLocalPart)
        );
    }

    #[test]
    fn dots_must_separate_atoms() {
        for bad in [".a@example.com", "a.@example.com", "a..b@example.com"] {
            assert_eq!(parse_email(bad), Err(SyntaxError::MisplacedDot), "{bad}");
        }
    }

    #[test]
    fn a_local_part_longer_than_64_octets_is_rejected() {
        let a = format!("{}@example.com", "a".repeat(65));
        assert_eq!(parse_email(&a), Err(SyntaxError::LocalPartTooLong(65)));
        let ok = format!("{}@example.com", "a".repeat(64));
        assert!(parse_email(&ok).is_ok());
    }

    #[test]
    fn an_address_longer_than_254_octets_is_rejected() {
        let domain = [&*"b".repeat(60); 3].join(".") + ".com"; // 186 chars
        let a = format!("{}@{domain}", "a".repeat(64)); // 64 + 1 + 186 = 251
        assert!(parse_email(&a).is_ok());
        let domain = [&*"b".repeat(62); 3].join(".") + ".com"; // 192 chars
        let a = format!("{}@{domain}", "a".repeat(64)); // 257
        assert_eq!(parse_email(&a), Err(SyntaxError::TooLong(257)));
    }

    #[test]
    fn quoted_local_parts_are_unsupported() {
        assert_eq!(
            parse_email("\"john doe\"@example.com"),
            Err(SyntaxError::QuotedLocalPart)
        );
    }

    #[test]
    fn spaces_commas_and_controls_are_rejected_in_the_local_part() {
        assert_eq!(
            parse_email("john doe@example.com"),
            Err(SyntaxError::InvalidLocalCharacter(' '))
        );
        assert_eq!(
            parse_email("a,b@example.com"),
            Err(SyntaxError::InvalidLocalCharacter(','))
        );
        assert_eq!(
            parse_email("jo\u{85}rg@example.com"),
            Err(SyntaxError::InvalidLocalCharacter('\u{85}'))
        );
        assert_eq!(
            parse_email("jo\u{3000}rg@example.com"),
            Err(SyntaxError::InvalidLocalCharacter('\u{3000}'))
        );
    }

    #[test]
    fn utf8_local_parts_pass_and_the_domain_becomes_its_a_label() {
        let e = parse_email("êjness@iana.org").unwrap();
        assert_eq!(e.local, "êjness");
        assert_eq!(e.domain, "iana.org");
        assert!(e.needs_smtputf8());
        let e = parse_email("伊昭傑@郵件.商務").unwrap();
        assert_eq!(e.local, "伊昭傑");
        assert!(
            e.domain.starts_with("xn--") && e.domain.is_ascii(),
            "{}",
            e.domain
        );
        assert_eq!(e.address, format!("伊昭傑@{}", e.domain));
        assert!(!parse_email("jane@acme.test").unwrap().needs_smtputf8());
    }

    #[test]
    fn a_utf8_local_part_is_limited_to_64_octets_not_characters() {
        // 22 three-octet characters: 66 octets.
        let local = "伊".repeat(22);
        assert_eq!(
            parse_email(&format!("{local}@iana.org")),
            Err(SyntaxError::LocalPartTooLong(66))
        );
    }

    #[test]
    fn a_bad_domain_makes_the_address_invalid() {
        assert!(matches!(
            parse_email("a@localhost"),
            Err(SyntaxError::Domain(DomainError::NoDot(_)))
        ));
    }

    // --- role / disposable ---

    #[test]
    fn a_role_account_is_risky() {
        for local in [
            "info",
            "Sales",
            "support",
            "admin",
            "contact",
            "hello",
            "office",
            "billing",
            "noreply",
            "no-reply",
            "no_reply",
            "postmaster",
            "abuse",
            "webmaster",
            "marketing",
            "jobs",
            "careers",
            "hr",
            "team",
            "help",
            "customer.service",
        ] {
            assert!(is_role_account(local), "{local}");
        }
    }

    #[test]
    fn a_tagged_role_account_is_still_a_role_account() {
        assert!(is_role_account("info+newsletter"));
        assert!(is_role_account("no-reply+x"));
    }

    #[test]
    fn a_personal_local_part_is_not_a_role_account() {
        for local in ["jane.doe", "jdoe", "informatics", "salesman.bob", "hrithik"] {
            assert!(!is_role_account(local), "{local}");
        }
    }

    #[test]
    fn a_known_disposable_domain_is_flagged() {
        assert!(is_disposable("33mail.com"));
        assert!(is_disposable("guerrillamailblock.com"));
        assert!(is_disposable("10minutemail.com"));
    }

    #[test]
    fn a_subdomain_of_a_disposable_domain_is_flagged() {
        assert!(is_disposable("ok.33mail.com"));
        assert!(is_disposable("OK.33Mail.com."));
    }

    #[test]
    fn an_ordinary_domain_is_not_disposable() {
        assert!(!is_disposable("gmail.com"));
        assert!(!is_disposable("example.com"));
        assert!(!is_disposable("com"));
    }

    // --- classify ---

    #[test]
    fn all_checks_passing_is_verified() {
        assert_eq!(classify(&clean()), EmailStatus::Verified);
    }

    #[test]
    fn a_skipped_smtp_probe_still_allows_verified() {
        let c = EmailChecks {
            smtp: Check::Skipped,
            ..clean()
        };
        assert_eq!(classify(&c), EmailStatus::Verified);
    }

    #[test]
    fn any_definite_failure_is_invalid() {
        for c in [
            EmailChecks {
                syntax: Check::Fail,
                mx: Check::Skipped,
                smtp: Check::Skipped,
                ..clean()
            },
            EmailChecks {
                mx: Check::Fail,
                ..clean()
            },
            EmailChecks {
                smtp: Check::Fail,
                ..clean()
            },
        ] {
            assert_eq!(classify(&c), EmailStatus::Invalid, "{c:?}");
        }
    }

    #[test]
    fn invalid_beats_unknown_and_risky() {
        let c = checks(
            Check::Pass,
            Check::Fail,
            Check::Fail,
            Check::Unknown,
            Check::Fail,
        );
        assert_eq!(classify(&c), EmailStatus::Invalid);
    }

    #[test]
    fn an_unfinished_network_check_is_unknown() {
        let mx = EmailChecks {
            mx: Check::Unknown,
            smtp: Check::Skipped,
            ..clean()
        };
        let smtp = EmailChecks {
            smtp: Check::Unknown,
            ..clean()
        };
        assert_eq!(classify(&mx), EmailStatus::Unknown);
        assert_eq!(classify(&smtp), EmailStatus::Unknown);
    }

    #[test]
    fn a_disposable_or_role_address_is_risky_even_when_the_network_did_not_answer() {
        let disposable = checks(
            Check::Pass,
            Check::Fail,
            Check::Pass,
            Check::Unknown,
            Check::Skipped,
        );
        assert_eq!(classify(&disposable), EmailStatus::Risky);
        let role = checks(
            Check::Pass,
            Check::Pass,
            Check::Fail,
            Check::Pass,
            Check::Unknown,
        );
        assert_eq!(classify(&role), EmailStatus::Risky);
    }

    #[test]
    fn an_unfinished_check_beats_an_implicit_mx_or_a_catch_all() {
        let c = checks(
            Check::Pass,
            Check::Pass,
            Check::Pass,
            Check::Warn,
            Check::Unknown,
        );
        assert_eq!(classify(&c), EmailStatus::Unknown);
    }

    #[test]
    fn a_disposable_domain_is_risky() {
        let c = EmailChecks {
            disposable: Check::Fail,
            ..clean()
        };
        assert_eq!(classify(&c), EmailStatus::Risky);
    }

    #[test]
    fn a_flagged_role_check_is_risky() {
        let c = EmailChecks {
            role: Check::Fail,
            ..clean()
        };
        assert_eq!(classify(&c), EmailStatus::Risky);
    }

    #[test]
    fn a_catch_all_server_is_risky() {
        let c = EmailChecks {
            smtp: Check::Warn,
            ..clean()
        };
        assert_eq!(classify(&c), EmailStatus::Risky);
    }

    #[test]
    fn an_implicit_mx_is_risky() {
        let c = EmailChecks {
            mx: Check::Warn,
            ..clean()
        };
        assert_eq!(classify(&c), EmailStatus::Risky);
    }

    #[test]
    fn statuses_and_checks_serialize_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&EmailStatus::Verified).unwrap(),
            "\"verified\""
        );
        let json = serde_json::to_value(clean()).unwrap();
        assert_eq!(json["smtp"], "pass");
        let back: EmailChecks = serde_json::from_value(json).unwrap();
        assert_eq!(back, clean());
    }

    // --- patterns ---

    #[test]
    fn every_pattern_renders_its_documented_shape() {
        let expect = [
            (Pattern::FirstDotLast, "jane.doe"),
            (Pattern::FirstLast, "janedoe"),
            (Pattern::FLast, "jdoe"),
            (Pattern::FirstL, "janed"),
            (Pattern::First, "jane"),
            (Pattern::Last, "doe"),
            (Pattern::FDotLast, "j.doe"),
            (Pattern::LastDotFirst, "doe.jane"),
            (Pattern::FirstUnderscoreLast, "jane_doe"),
        ];
        for (p, local) in expect {
            assert_eq!(
                p.render("Jane", "Doe", "Example.com").unwrap(),
                format!("{local}@example.com"),
                "{}",
                p.name()
            );
        }
    }

    #[test]
    fn pattern_names_are_the_shapes_they_build() {
        assert_eq!(Pattern::FirstDotLast.name(), "first.last");
        assert_eq!(Pattern::FLast.name(), "flast");
        assert_eq!(Pattern::FirstUnderscoreLast.name(), "first_last");
    }

    #[test]
    fn diacritics_are_folded_to_ascii() {
        assert_eq!(
            Pattern::FirstDotLast
                .render("José", "Muñoz", "x.com")
                .unwrap(),
            "jose.munoz@x.com"
        );
        assert_eq!(
            Pattern::FirstDotLast
                .render("Jürgen", "Weiß", "x.com")
                .unwrap(),
            "jurgen.weiss@x.com"
        );
        assert_eq!(
            Pattern::FirstDotLast
                .render("Søren", "Kierkegård", "x.com")
                .unwrap(),
            "soren.kierkegard@x.com"
        );
        assert_eq!(
            Pattern::FirstLast.render("Zoë", "Łukasz", "x.com").unwrap(),
            "zoelukasz@x.com"
        );
    }

    #[test]
    fn apostrophes_hyphens_and_spaces_are_dropped_from_names() {
        assert_eq!(
            Pattern::FirstDotLast
                .render("Mary-Jane", "O'Brien", "x.com")
                .unwrap(),
            "maryjane.obrien@x.com"
        );
        assert_eq!(
            Pattern::FLast
                .render("Anna", "van der Berg", "x.com")
                .unwrap(),
            "avanderberg@x.com"
        );
    }

    #[test]
    fn a_missing_name_part_renders_nothing() {
        assert_eq!(Pattern::FirstDotLast.render("Jane", "", "x.com"), None);
        assert_eq!(Pattern::FLast.render("", "Doe", "x.com"), None);
        assert_eq!(Pattern::FirstL.render("Jane", "'-", "x.com"), None);
        assert_eq!(Pattern::First.render("李", "Doe", "x.com"), None);
        assert_eq!(
            Pattern::First.render("Jane", "", "x.com").unwrap(),
            "jane@x.com"
        );
        assert_eq!(
            Pattern::Last.render("", "Doe", "x.com").unwrap(),
            "doe@x.com"
        );
    }

    #[test]
    fn no_known_addresses_gives_no_guess() {
        assert_eq!(infer_pattern(&[]), None);
        assert_eq!(FALLBACK, Pattern::FirstDotLast);
        const { assert!(FALLBACK_CONFIDENCE < 0.5) };
    }

    #[test]
    fn addresses_matching_no_pattern_give_no_guess() {
        assert_eq!(
            infer_pattern(&[known("Jane", "Doe", "xyz123@acme.com")]),
            None
        );
    }

    #[test]
    fn a_single_sample_gives_half_confidence() {
        let g = infer_pattern(&[known("Jane", "Doe", "jdoe@acme.com")]).unwrap();
        assert_eq!(g.pattern, Pattern::FLast);
        assert_eq!((g.support, g.total), (1, 1));
        assert!((g.confidence - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_most_supported_pattern_wins() {
        let g = infer_pattern(&[
            known("Jane", "Doe", "jane.doe@acme.com"),
            known("Bob", "Stone", "bstone@acme.com"),
            known("Ann", "Lee", "alee@acme.com"),
            known("Tom", "Wu", "twu@acme.com"),
        ])
        .unwrap();
        assert_eq!(g.pattern, Pattern::FLast);
        assert_eq!((g.support, g.total), (3, 4));
        assert!((g.confidence - 0.75 * 0.875).abs() < 1e-9);
    }

    #[test]
    fn ties_go_to_the_preferred_pattern() {
        let g = infer_pattern(&[
            known("Jane", "Doe", "jdoe@acme.com"),
            known("Bob", "Stone", "bob.stone@acme.com"),
        ])
        .unwrap();
        assert_eq!(g.pattern, Pattern::FirstDotLast);
        assert_eq!(g.support, 1);
    }

    #[test]
    fn an_ambiguous_sample_supports_every_pattern_it_fits() {
        // A one-letter first name makes first.last and f.last identical.
        let g = infer_pattern(&[
            known("J", "Doe", "j.doe@acme.com"),
            known("Bob", "Stone", "b.stone@acme.com"),
        ])
        .unwrap();
        assert_eq!(g.pattern, Pattern::FDotLast);
        assert_eq!(g.support, 2);
    }

    #[test]
    fn confidence_grows_with_support_and_is_capped() {
        let many: Vec<_> = (0..10)
            .map(|i| {
                let last = format!("Smith{i}");
                known("Jane", &last, &format!("jane.smith{i}@acme.com"))
            })
            .collect();
        let two = infer_pattern(&many[..2]).unwrap().confidence;
        let three = infer_pattern(&many[..3]).unwrap().confidence;
        let ten = infer_pattern(&many).unwrap().confidence;
        assert!(two < three && three < ten);
        assert!((ten - MAX_CONFIDENCE).abs() < 1e-9);
    }

    #[test]
    fn known_addresses_are_matched_case_and_tag_insensitively() {
        let g = infer_pattern(&[known("José", "Muñoz", "Jose.Munoz+crm@Acme.com")]).unwrap();
        assert_eq!(g.pattern, Pattern::FirstDotLast);
    }
}
