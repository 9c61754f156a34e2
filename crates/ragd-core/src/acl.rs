//! Who may see a document. A document's `acl` lists principals (user or
//! group names, matched literally); an empty `acl` means the whole tenant.
//! Every place that returns documents or their chunks (the index query, the
//! document list and get, counts) applies one [`Visibility`].

/// What a request may see of its tenant's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Every document, whatever its ACL (tenant admins).
    All,
    /// Documents without an ACL, and those whose ACL names one of these
    /// principals; with none, only documents without an ACL.
    Principals(Vec<String>),
}

impl Visibility {
    /// Only documents without an ACL.
    pub fn public() -> Self {
        Self::Principals(Vec::new())
    }

    /// Whether a document with this `acl` is visible.
    pub fn allows(&self, acl: &[String]) -> bool {
        match self {
            Self::All => true,
            Self::Principals(principals) => acl.is_empty() || acl.iter().any(|p| principals.contains(p)),
        }
    }

    /// The principals an index query filters on; `None` filters nothing.
    pub fn index_principals(&self) -> Option<Vec<String>> {
        match self {
            Self::All => None,
            Self::Principals(principals) => Some(principals.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_follows_the_acl() {
        let acl = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let alice = Visibility::Principals(acl(&["alice", "eng"]));
        let cases: &[(&Visibility, &[&str], bool)] = &[
            (&Visibility::All, &["bob"], true),
            (&Visibility::All, &[], true),
            (&alice, &[], true),
            (&alice, &["alice"], true),
            (&alice, &["ops", "eng"], true),
            (&alice, &["bob", "ops"], false),
            (&alice, &["Alice"], false),
        ];
        for (visibility, document_acl, visible) in cases {
            assert_eq!(visibility.allows(&acl(document_acl)), *visible, "{visibility:?} on {document_acl:?}");
        }
        let public = Visibility::public();
        assert!(public.allows(&[]));
        assert!(!public.allows(&acl(&["alice"])));
        assert_eq!(public.index_principals(), Some(vec![]));
        assert_eq!(Visibility::All.index_principals(), None);
    }
}
