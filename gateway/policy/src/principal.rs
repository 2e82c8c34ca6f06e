//! Principals: a user or a group is a name *at an issuer*. Two issuers may both know an
//! `alice` or a `dba` group; they are different principals, and nothing that names one may
//! be satisfied by the other.
//!
//! Configuration, policy files, the CLI and the API write a principal as `alias:name`, where
//! `alias` is the `name` of an `[[identity.issuers]]` entry (`dev` for the development issuer),
//! or as a plain `name` when exactly one issuer other than the development issuer is
//! configured (or the development issuer alone) ([`Issuers::user`], [`Issuers::group`]). The
//! development issuer mints any name for whoever runs `gatehouse token`, so it never stands in
//! for a real IdP: beside one, its principals are written `dev:name`. A written name whose text before the first `:` is not a configured
//! alias is a plain name, so existing single-issuer configurations (no aliases) read as
//! before, names with colons included.

use std::collections::BTreeMap;
use std::fmt;

/// An issuer, identified by its `iss` value exactly (not by its alias, which is only how
/// configuration spells it: renaming an alias changes no stored principal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IssuerId(String);

impl IssuerId {
    pub fn new(iss: impl Into<String>) -> Self {
        Self(iss.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user: the username claim of a verified token, at the token's issuer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    pub issuer: IssuerId,
    pub name: String,
}

impl Principal {
    pub fn new(issuer: IssuerId, name: impl Into<String>) -> Self {
        Self {
            issuer,
            name: name.into(),
        }
    }

    /// The same person for the approval rules (self-approval, distinct approvers): same
    /// issuer, names equal ignoring ASCII case (fail closed: `Bob` is `bob`).
    pub fn same_person(&self, other: &Principal) -> bool {
        self.issuer == other.issuer && self.name.eq_ignore_ascii_case(&other.name)
    }
}

/// For logs and messages: `alice (https://idp.example)`. Never parsed back.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.issuer)
    }
}

/// A group from a token's groups claim, at the token's issuer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    pub issuer: IssuerId,
    pub name: String,
}

impl Group {
    pub fn new(issuer: IssuerId, name: impl Into<String>) -> Self {
        Self {
            issuer,
            name: name.into(),
        }
    }

    /// The groups of one token, all at its issuer.
    pub fn all_of(issuer: &IssuerId, names: &[String]) -> Vec<Group> {
        names
            .iter()
            .map(|n| Group::new(issuer.clone(), n.clone()))
            .collect()
    }
}

/// Why a written user or group name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty {what} name")]
    Empty { what: &'static str },
    #[error(
        "{what} {written:?} is ambiguous: {count} issuers are configured; write it as \
         <issuer name>:{written} (issuer names: {aliases})"
    )]
    Ambiguous {
        what: &'static str,
        written: String,
        count: usize,
        aliases: String,
    },
    #[error("no issuer is configured, so {what} {written:?} names nobody")]
    NoIssuer { what: &'static str, written: String },
    #[error("issuer name {0:?}: use 1-32 letters, digits, '_', '-' (no ':')")]
    BadAlias(String),
    #[error("issuer name {0:?} is used twice")]
    DuplicateAlias(String),
}

/// The configured issuers and their aliases: how written names become principals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issuers {
    aliases: BTreeMap<String, IssuerId>,
    all: Vec<IssuerId>,
    /// The development issuer, when enabled (also in `all`).
    development: Option<IssuerId>,
}

impl Issuers {
    /// Every configured issuer with its alias, if it has one.
    pub fn new(
        list: impl IntoIterator<Item = (Option<String>, IssuerId)>,
    ) -> Result<Issuers, NameError> {
        let mut out = Issuers::default();
        for (alias, id) in list {
            if let Some(a) = alias {
                let ok = !a.is_empty()
                    && a.len() <= 32
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(NameError::BadAlias(a));
                }
                if out.aliases.insert(a.clone(), id.clone()).is_some() {
                    return Err(NameError::DuplicateAlias(a));
                }
            }
            out.all.push(id);
        }
        Ok(out)
    }

    /// Adds the development issuer under `alias` (`dev`). Plain names resolve to it only
    /// when no other issuer is configured.
    pub fn with_development(mut self, alias: &str, id: IssuerId) -> Result<Issuers, NameError> {
        let mut one = Issuers::new([(Some(alias.to_owned()), id.clone())])?;
        if self.aliases.contains_key(alias) {
            return Err(NameError::DuplicateAlias(alias.to_owned()));
        }
        self.aliases.append(&mut one.aliases);
        self.all.push(id.clone());
        self.development = Some(id);
        Ok(self)
    }

    /// One issuer, no alias (tests, single-issuer tools).
    pub fn single(id: IssuerId) -> Issuers {
        Issuers {
            aliases: BTreeMap::new(),
            all: vec![id],
            development: None,
        }
    }

    /// The issuer a plain name means: the only issuer other than the development issuer, or
    /// the development issuer when it is the only one.
    pub fn sole(&self) -> Option<&IssuerId> {
        let real: Vec<&IssuerId> = self
            .all
            .iter()
            .filter(|i| Some(*i) != self.development.as_ref())
            .collect();
        match (real.as_slice(), &self.development) {
            ([one], _) => Some(one),
            ([], Some(dev)) => Some(dev),
            _ => None,
        }
    }

    /// The one configured issuer, when exactly one is (the development issuer counts): the
    /// only case where a name stored without an issuer can be given one unambiguously.
    pub fn only(&self) -> Option<&IssuerId> {
        match self.all.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The alias of `issuer`, if it has one.
    pub fn alias_of(&self, issuer: &IssuerId) -> Option<&str> {
        self.aliases
            .iter()
            .find(|(_, id)| *id == issuer)
            .map(|(a, _)| a.as_str())
    }

    fn resolve(&self, written: &str, what: &'static str) -> Result<(IssuerId, String), NameError> {
        if let Some((alias, name)) = written.split_once(':') {
            if let Some(id) = self.aliases.get(alias) {
                if name.trim().is_empty() {
                    return Err(NameError::Empty { what });
                }
                return Ok((id.clone(), name.to_owned()));
            }
        }
        if written.trim().is_empty() {
            return Err(NameError::Empty { what });
        }
        if let Some(one) = self.sole() {
            return Ok((one.clone(), written.to_owned()));
        }
        match self.all.as_slice() {
            [] => Err(NameError::NoIssuer {
                what,
                written: written.to_owned(),
            }),
            many => Err(NameError::Ambiguous {
                what,
                written: written.to_owned(),
                count: many.len(),
                aliases: if self.aliases.is_empty() {
                    "none configured; give each [[identity.issuers]] a name".to_owned()
                } else {
                    self.aliases.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
        }
    }

    /// A user as configuration, the CLI or the API writes it.
    pub fn user(&self, written: &str) -> Result<Principal, NameError> {
        let (issuer, name) = self.resolve(written, "user")?;
        Ok(Principal { issuer, name })
    }

    /// A group as configuration, the CLI or the API writes it.
    pub fn group(&self, written: &str) -> Result<Group, NameError> {
        let (issuer, name) = self.resolve(written, "group")?;
        Ok(Group { issuer, name })
    }

    /// Several groups; the first error wins.
    pub fn groups(&self, written: &[String]) -> Result<Vec<Group>, NameError> {
        written.iter().map(|g| self.group(g)).collect()
    }

    /// How a principal is written back: `name` with a sole issuer, `alias:name` when its
    /// issuer has an alias, else `<iss> name` (readable, never re-parsed).
    pub fn show_user(&self, p: &Principal) -> String {
        self.show(&p.issuer, &p.name)
    }

    /// As [`Issuers::show_user`], for a group.
    pub fn show_group(&self, g: &Group) -> String {
        self.show(&g.issuer, &g.name)
    }

    fn show(&self, issuer: &IssuerId, name: &str) -> String {
        if self.sole() == Some(issuer) {
            return name.to_owned();
        }
        match self.alias_of(issuer) {
            Some(a) => format!("{a}:{name}"),
            None => format!("<{issuer}> {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn two() -> Issuers {
        Issuers::new([
            (Some("corp".into()), IssuerId::new("https://corp.example")),
            (
                Some("partner".into()),
                IssuerId::new("https://partner.example"),
            ),
        ])
        .unwrap()
    }

    #[test]
    fn plain_names_need_exactly_one_issuer() {
        let one = Issuers::single(IssuerId::new("https://corp.example"));
        let alice = one.user("alice").unwrap();
        assert_eq!(alice.issuer.as_str(), "https://corp.example");
        assert_eq!(alice.name, "alice");
        // No alias configured: a colon is part of the name (old configs read as before).
        assert_eq!(one.user("auth0:123").unwrap().name, "auth0:123");
        let e = two().user("alice").unwrap_err();
        assert!(matches!(e, NameError::Ambiguous { .. }), "{e}");
        assert!(e.to_string().contains("corp, partner"), "{e}");
        let e = two().group("dba").unwrap_err();
        assert!(matches!(e, NameError::Ambiguous { .. }), "{e}");
        assert!(Issuers::default().user("alice").is_err());
    }

    #[test]
    fn aliases_qualify_and_the_same_name_at_two_issuers_differs() {
        let i = two();
        let a = i.user("corp:alice").unwrap();
        let b = i.user("partner:alice").unwrap();
        assert_ne!(a, b);
        assert!(
            !a.same_person(&b),
            "same name, other issuer: another person"
        );
        assert!(a.same_person(&i.user("corp:ALICE").unwrap()));
        assert_ne!(
            i.group("corp:dba").unwrap(),
            i.group("partner:dba").unwrap()
        );
        // The first colon separates the alias; the rest is the name.
        assert_eq!(i.user("corp:urn:x:bob").unwrap().name, "urn:x:bob");
        assert!(i.user("corp:").is_err());
        assert!(i.user("other:alice").is_err(), "unknown alias, two issuers");
        assert_eq!(i.show_user(&a), "corp:alice");
    }

    #[test]
    fn plain_names_never_mean_the_development_issuer_beside_a_real_one() {
        let dev = IssuerId::new("gatehouse-dev");
        let corp = IssuerId::new("https://corp.example");
        let i = Issuers::new([(None, corp.clone())])
            .unwrap()
            .with_development("dev", dev.clone())
            .unwrap();
        assert_eq!(i.user("alice").unwrap().issuer, corp);
        assert_eq!(i.group("dba").unwrap().issuer, corp);
        assert_eq!(i.user("dev:alice").unwrap().issuer, dev);
        assert_eq!(i.show_user(&i.user("alice").unwrap()), "alice");
        assert_eq!(i.show_user(&i.user("dev:alice").unwrap()), "dev:alice");
        // The development issuer alone: plain names are its own.
        let only = Issuers::default()
            .with_development("dev", dev.clone())
            .unwrap();
        assert_eq!(only.user("alice").unwrap().issuer, dev);
        // Two real issuers (and dev): plain names are ambiguous.
        let three = two().with_development("dev", dev).unwrap();
        assert!(matches!(
            three.user("alice"),
            Err(NameError::Ambiguous { .. })
        ));
        assert!(two().with_development("corp", corp).is_err(), "alias taken");
    }

    #[test]
    fn bad_or_duplicate_aliases_are_refused() {
        let id = || IssuerId::new("https://a.example");
        assert!(Issuers::new([(Some("a:b".into()), id())]).is_err());
        assert!(Issuers::new([(Some(String::new()), id())]).is_err());
        let e = Issuers::new([
            (Some("x".into()), id()),
            (Some("x".into()), IssuerId::new("https://b.example")),
        ])
        .unwrap_err();
        assert_eq!(e, NameError::DuplicateAlias("x".into()));
    }
}
