//! Parsing and validation of identities: the SPIFFE character rules plus
//! our fixed path shape, for [`TrustDomain`], [`SpiffeId`] and
//! [`SpiffeIdPattern`].
//!
//! The types live in the parent module, below [`crate::Error`] (whose
//! variants carry them); this module builds them and reports what is wrong
//! as an [`Error`], so it sits above it.

use std::str::FromStr;

use super::{SpiffeId, SpiffeIdPart, SpiffeIdPattern, TrustDomain, SCHEME, WILDCARD};
use crate::error::Error;

const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// Checks a trust domain name; the error is the reason, to be wrapped by the caller.
fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("is empty".into());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "is {} bytes long, above the maximum of {MAX_TRUST_DOMAIN_LEN}",
            td.len()
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "contains {c:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
        ));
    }
    Ok(())
}

/// Checks one path segment; the error is the reason.
fn check_segment(segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err("is empty".into());
    }
    if segment == "." || segment == ".." {
        return Err(format!("{segment:?} is not allowed"));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{segment:?} contains {c:?}; only letters, digits, '.', '-' and '_' are allowed"
        ));
    }
    Ok(())
}

/// Splits `spiffe://<td>/<path>` after checking the scheme and the trust
/// domain. `make` builds the error so ids and patterns report the same way.
fn split_uri<'a>(
    input: &'a str,
    make: &dyn Fn(SpiffeIdPart, String) -> Error,
) -> Result<(TrustDomain, Option<&'a str>), Error> {
    if input.len() > MAX_ID_LEN {
        return Err(make(
            SpiffeIdPart::Whole,
            format!(
                "is {} bytes long, above the maximum of {MAX_ID_LEN}",
                input.len()
            ),
        ));
    }
    let rest = input
        .strip_prefix(SCHEME)
        .ok_or_else(|| make(SpiffeIdPart::Scheme, "must be \"spiffe://\"".into()))?;
    let (td, path) = match rest.split_once('/') {
        Some((td, path)) => (td, Some(path)),
        None => (rest, None),
    };
    check_trust_domain(td).map_err(|reason| make(SpiffeIdPart::TrustDomain, reason))?;
    Ok((TrustDomain(td.into()), path))
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Validates `name` as a trust domain.
    pub fn new(name: &str) -> Result<Self, Error> {
        check_trust_domain(name).map_err(|reason| Error::InvalidTrustDomain {
            input: name.to_owned(),
            reason,
        })?;
        Ok(Self(name.into()))
    }
}

impl FromStr for TrustDomain {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Builds an id from its parts, validating each.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, Error> {
        let id = Self {
            trust_domain,
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let make = |part, reason| Error::InvalidSpiffeId {
            input: id.to_string(),
            part,
            reason,
        };
        check_segment(namespace).map_err(|r| make(SpiffeIdPart::Namespace, r))?;
        check_segment(service_account).map_err(|r| make(SpiffeIdPart::ServiceAccount, r))?;
        Ok(id)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let make = |part, reason| Error::InvalidSpiffeId {
            input: input.to_owned(),
            part,
            reason,
        };
        let (trust_domain, path) = split_uri(input, &make)?;
        let expected = "expected /ns/<namespace>/sa/<service-account>";
        let path =
            path.ok_or_else(|| make(SpiffeIdPart::Path, format!("is missing; {expected}")))?;
        let segments: Vec<&str> = path.split('/').collect();
        let ["ns", namespace, "sa", service_account] = segments.as_slice() else {
            return Err(make(
                SpiffeIdPart::Path,
                format!("\"/{path}\" has the wrong shape; {expected}"),
            ));
        };
        check_segment(namespace).map_err(|r| make(SpiffeIdPart::Namespace, r))?;
        check_segment(service_account).map_err(|r| make(SpiffeIdPart::ServiceAccount, r))?;
        Ok(Self {
            trust_domain,
            namespace: (*namespace).into(),
            service_account: (*service_account).into(),
        })
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self, Error> {
        s.parse()
    }
}

// === impl SpiffeIdPattern ===

impl FromStr for SpiffeIdPattern {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let make = |part, reason| Error::InvalidSpiffeIdPattern {
            input: input.to_owned(),
            part,
            reason,
        };
        let (trust_domain, path) = split_uri(input, &make)?;
        let expected =
            "expected /ns/<namespace>/sa/<service-account>, /ns/<namespace>/sa/* or /ns/*";
        let path =
            path.ok_or_else(|| make(SpiffeIdPart::Path, format!("is missing; {expected}")))?;
        let segments: Vec<&str> = path.split('/').collect();
        let (namespace, service_account) = match segments.as_slice() {
            ["ns", WILDCARD] => (None, None),
            ["ns", ns, "sa", WILDCARD] => (Some(*ns), None),
            ["ns", ns, "sa", sa] => (Some(*ns), Some(*sa)),
            _ => {
                return Err(make(
                    SpiffeIdPart::Path,
                    format!("\"/{path}\" has the wrong shape; {expected}"),
                ))
            }
        };
        if let Some(ns) = namespace {
            check_segment(ns).map_err(|r| make(SpiffeIdPart::Namespace, r))?;
        }
        if let Some(sa) = service_account {
            check_segment(sa).map_err(|r| make(SpiffeIdPart::ServiceAccount, r))?;
        }
        Ok(Self {
            trust_domain,
            namespace: namespace.map(Box::from),
            service_account: service_account.map(Box::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn pattern(s: &str) -> SpiffeIdPattern {
        s.parse().unwrap()
    }

    fn part_of(err: Error) -> SpiffeIdPart {
        match err {
            Error::InvalidSpiffeId { part, .. } | Error::InvalidSpiffeIdPattern { part, .. } => {
                part
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn parses_and_round_trips() {
        let s = "spiffe://cluster.local/ns/prod/sa/web-frontend";
        let id = id(s);
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "prod");
        assert_eq!(id.service_account(), "web-frontend");
        assert_eq!(id.to_string(), s);
        assert_eq!(format!("{id:?}"), format!("SpiffeId({s})"));
        let built = SpiffeId::new(
            TrustDomain::new("cluster.local").unwrap(),
            "prod",
            "web-frontend",
        );
        assert_eq!(built.unwrap(), id);
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("http://td/ns/a/sa/b", SpiffeIdPart::Scheme),
            ("SPIFFE://td/ns/a/sa/b", SpiffeIdPart::Scheme),
            ("spiffe://TD/ns/a/sa/b", SpiffeIdPart::TrustDomain),
            ("spiffe:///ns/a/sa/b", SpiffeIdPart::TrustDomain),
            ("spiffe://td:8080/ns/a/sa/b", SpiffeIdPart::TrustDomain),
            ("spiffe://user@td/ns/a/sa/b", SpiffeIdPart::TrustDomain),
            ("spiffe://td", SpiffeIdPart::Path),
            ("spiffe://td/", SpiffeIdPart::Path),
            ("spiffe://td/ns/a", SpiffeIdPart::Path),
            ("spiffe://td/ns/a/sa/b/", SpiffeIdPart::Path),
            ("spiffe://td/namespace/a/sa/b", SpiffeIdPart::Path),
            ("spiffe://td/ns//sa/b", SpiffeIdPart::Namespace),
            ("spiffe://td/ns/../sa/b", SpiffeIdPart::Namespace),
            ("spiffe://td/ns/a%2f/sa/b", SpiffeIdPart::Namespace),
            ("spiffe://td/ns/a/sa/b?x=1", SpiffeIdPart::ServiceAccount),
            ("spiffe://td/ns/a/sa/*", SpiffeIdPart::ServiceAccount),
        ];
        for (input, part) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err();
            let message = err.to_string();
            assert!(message.contains(input), "{message}");
            assert!(message.contains(&part.to_string()), "{message}");
            assert_eq!(part_of(err), part, "{input}");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(MAX_ID_LEN));
        assert_eq!(
            part_of(long.parse::<SpiffeId>().unwrap_err()),
            SpiffeIdPart::Whole
        );
    }

    #[test]
    fn error_message_is_readable() {
        let err = "spiffe://td/ns/a b/sa/x".parse::<SpiffeId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SPIFFE id \"spiffe://td/ns/a b/sa/x\": namespace \"a b\" contains ' '; \
             only letters, digits, '.', '-' and '_' are allowed"
        );
    }

    #[test]
    fn trust_domain_validation() {
        assert!(TrustDomain::new("example.org").is_ok());
        let err = TrustDomain::new("Example.org").unwrap_err();
        assert!(err.to_string().contains("'E'"), "{err}");
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new(&"a".repeat(256)).is_err());
    }

    #[test]
    fn wildcard_patterns_match() {
        let web = id("spiffe://td/ns/prod/sa/web");
        let db = id("spiffe://td/ns/prod/sa/db");
        let dev = id("spiffe://td/ns/dev/sa/web");
        let other_td = id("spiffe://other/ns/prod/sa/web");

        let exact = pattern("spiffe://td/ns/prod/sa/web");
        assert!(exact.is_exact());
        assert!(exact.matches(&web));
        assert!(!exact.matches(&db));
        assert_eq!(exact, SpiffeIdPattern::from(&web));

        let namespace = pattern("spiffe://td/ns/prod/sa/*");
        assert!(!namespace.is_exact());
        assert!(namespace.matches(&web) && namespace.matches(&db));
        assert!(!namespace.matches(&dev));

        let domain = pattern("spiffe://td/ns/*");
        assert!(domain.matches(&web) && domain.matches(&dev));
        assert!(!domain.matches(&other_td));
        assert_eq!(domain, SpiffeIdPattern::any_in(web.trust_domain()));

        for p in [
            "spiffe://td/ns/prod/sa/web",
            "spiffe://td/ns/prod/sa/*",
            "spiffe://td/ns/*",
        ] {
            assert_eq!(pattern(p).to_string(), p);
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        let cases = [
            ("spiffe://td/*", SpiffeIdPart::Path),
            ("spiffe://td/ns/*/sa/web", SpiffeIdPart::Namespace),
            ("spiffe://td/ns/prod/sa/we*", SpiffeIdPart::ServiceAccount),
            ("spiffe://*/ns/*", SpiffeIdPart::TrustDomain),
            ("spiffe://td/ns/prod/*", SpiffeIdPart::Path),
        ];
        for (input, part) in cases {
            let err = input.parse::<SpiffeIdPattern>().unwrap_err();
            assert!(matches!(err, Error::InvalidSpiffeIdPattern { .. }), "{err}");
            assert_eq!(part_of(err), part, "{input}");
        }
    }
}
