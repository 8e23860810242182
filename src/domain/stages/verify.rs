//! `email_verify`: the verdict on one address from the checks' outcomes. The network checks
//! (MX, SMTP) run in the worker; here they arrive as verdicts.

use crate::domain::email::{
    classify, is_disposable, is_role_account, parse_email, Check, EmailChecks, EmailStatus,
    ParsedEmail,
};

/// What DNS said about the address's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MxVerdict {
    /// MX records.
    MailServer,
    /// No MX, but (RFC 5321 §5.1) an address record standing in for one: often a web server
    /// that takes no mail, so it only earns a warning.
    ImplicitMx,
    /// NXDOMAIN, a null MX, or neither MX nor address records.
    NoMailServer,
    /// The lookup could not finish (timeout, SERVFAIL).
    Unknown,
}

/// What an SMTP RCPT probe said, when one ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpVerdict {
    NotProbed,
    Accepted,
    CatchAll,
    Rejected,
    Unknown,
}

/// The checks that need no network. `Err` carries the final checks of an address whose syntax
/// fails, so that the network is never asked about it.
pub fn offline_checks(email: &str) -> Result<(ParsedEmail, EmailChecks), EmailChecks> {
    match parse_email(email) {
        Err(_) => Err(EmailChecks {
            syntax: Check::Fail,
            disposable: Check::Skipped,
            role: Check::Skipped,
            mx: Check::Skipped,
            smtp: Check::Skipped,
        }),
        Ok(parsed) => {
            let checks = EmailChecks {
                syntax: Check::Pass,
                disposable: flag(is_disposable(&parsed.domain)),
                role: flag(is_role_account(&parsed.local)),
                mx: Check::Skipped,
                smtp: Check::Skipped,
            };
            Ok((parsed, checks))
        }
    }
}

fn flag(flagged: bool) -> Check {
    if flagged {
        Check::Fail
    } else {
        Check::Pass
    }
}

/// Completes the checks with the network verdicts and classifies the address.
pub fn verdict(
    mut checks: EmailChecks,
    mx: MxVerdict,
    smtp: SmtpVerdict,
) -> (EmailStatus, EmailChecks) {
    checks.mx = match mx {
        MxVerdict::MailServer => Check::Pass,
        MxVerdict::ImplicitMx => Check::Warn,
        MxVerdict::NoMailServer => Check::Fail,
        MxVerdict::Unknown => Check::Unknown,
    };
    checks.smtp = match smtp {
        SmtpVerdict::NotProbed => Check::Skipped,
        SmtpVerdict::Accepted => Check::Pass,
        SmtpVerdict::CatchAll => Check::Warn,
        SmtpVerdict::Rejected => Check::Fail,
        SmtpVerdict::Unknown => Check::Unknown,
    };
    (classify(&checks), checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(email: &str, mx: MxVerdict, smtp: SmtpVerdict) -> EmailStatus {
        match offline_checks(email) {
            Err(c) => classify(&c),
            Ok((_, c)) => verdict(c, mx, smtp).0,
        }
    }

    #[test]
    fn a_personal_address_with_a_mail_server_is_verified() {
        assert_eq!(
            status(
                "ada@acme.example",
                MxVerdict::MailServer,
                SmtpVerdict::NotProbed
            ),
            EmailStatus::Verified
        );
    }

    #[test]
    fn bad_syntax_is_invalid_without_asking_the_network() {
        let checks = offline_checks("ada@@acme").unwrap_err();
        assert_eq!(checks.syntax, Check::Fail);
        assert_eq!(checks.mx, Check::Skipped);
        assert_eq!(classify(&checks), EmailStatus::Invalid);
    }

    #[test]
    fn a_role_account_is_risky() {
        assert_eq!(
            status(
                "sales@acme.example",
                MxVerdict::MailServer,
                SmtpVerdict::NotProbed
            ),
            EmailStatus::Risky
        );
    }

    #[test]
    fn a_domain_without_a_mail_server_is_invalid() {
        assert_eq!(
            status(
                "ada@acme.example",
                MxVerdict::NoMailServer,
                SmtpVerdict::NotProbed
            ),
            EmailStatus::Invalid
        );
    }

    #[test]
    fn a_dns_timeout_is_unknown_and_a_catch_all_is_risky() {
        assert_eq!(
            status(
                "ada@acme.example",
                MxVerdict::Unknown,
                SmtpVerdict::NotProbed
            ),
            EmailStatus::Unknown
        );
        assert_eq!(
            status(
                "ada@acme.example",
                MxVerdict::MailServer,
                SmtpVerdict::CatchAll
            ),
            EmailStatus::Risky
        );
        assert_eq!(
            status(
                "ada@acme.example",
                MxVerdict::MailServer,
                SmtpVerdict::Rejected
            ),
            EmailStatus::Invalid
        );
    }
}
