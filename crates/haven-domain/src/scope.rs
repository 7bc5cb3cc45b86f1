//! SMART on FHIR scopes (SMART App Launch 2.0.0, `scopes-and-launch-context.html`): parsing,
//! the canonical form, access checks, and the intersection an authorization server grants.
//!
//! Both syntaxes are read: v1 (`patient/*.read`, `user/Observation.write`, `system/*.*`) and v2
//! (`patient/Observation.rs`, `user/*.cruds`, granular `patient/Observation.rs?category=…`).
//! Everything is kept in one model — a context, a resource selector, a set of permissions and an
//! optional query filter — and always written back in v2 form, so v1 and v2 requests for the
//! same access compare equal. v1 `read` is `rs`, `write` is `cud`, `*` is `cruds`.
//!
//! The scope string is client input on the authorize and token endpoints, so it is bounded before
//! anything else is done with it: at most [`MAX_SCOPE_STRING_BYTES`] bytes and [`MAX_SCOPES`]
//! scopes, and each query filter at most [`MAX_FILTER_BYTES`] bytes and [`MAX_FILTER_PARAMS`]
//! parameters. Within those bounds, [`Scopes::parse`] keeps the scopes it understands and hands
//! back the others (RFC 6749 §3.3: the server may grant less than was asked, so an unknown scope
//! is dropped, not fatal); [`Scopes::parse_strict`] refuses the whole string instead, for
//! configuration where a typo must not silently narrow a client.
//!
//! Whether a resource type exists is not checked here: the selector only has to look like a
//! resource type name, and the caller checks it against the FHIR definitions it serves.
//!
//! # Query filters
//!
//! A filtered scope (`patient/Observation.rs?category=…|vital-signs`) grants the action only on
//! resources the filter matches. [`Scopes::permits`] answers "may the action happen at all" and
//! is `true` for a filtered grant; the caller must then ask [`Scopes::grant`] (or
//! [`Scopes::filters_for`]) and apply the filters: add them to a search, or check a read
//! resource against them. Several filters are alternatives (a resource matching any one is
//! granted); the parameters inside one filter all apply together, as in a FHIR search.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::ops::{BitAnd, BitOr};
use std::str::FromStr;

/// The longest scope string accepted, in bytes.
pub const MAX_SCOPE_STRING_BYTES: usize = 4096;
/// The most scopes one string may hold (counting duplicates and rejected ones).
pub const MAX_SCOPES: usize = 100;
/// The longest query filter (the text after `?`), in bytes, before percent-decoding.
pub const MAX_FILTER_BYTES: usize = 256;
/// The most `name=value` pairs one query filter may hold.
pub const MAX_FILTER_PARAMS: usize = 8;
/// Resource type and search parameter names are short; a longer one is not a name.
const MAX_NAME_BYTES: usize = 64;

/// Whose data a resource scope reaches: the launch patient's, what the user may see, or what a
/// backend service may see.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    pub const ALL: [Context; 3] = [Context::Patient, Context::User, Context::System];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request does to a resource, in SMART v2 terms.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Create,
        Action::Read,
        Action::Update,
        Action::Delete,
        Action::Search,
    ];

    /// The single permission this action needs.
    #[must_use]
    pub const fn permission(self) -> Permissions {
        match self {
            Action::Create => Permissions::CREATE,
            Action::Read => Permissions::READ,
            Action::Update => Permissions::UPDATE,
            Action::Delete => Permissions::DELETE,
            Action::Search => Permissions::SEARCH,
        }
    }
}

/// A set of SMART v2 permissions (`c`, `r`, `u`, `d`, `s`), as bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    pub const CREATE: Permissions = Permissions(1);
    pub const READ: Permissions = Permissions(1 << 1);
    pub const UPDATE: Permissions = Permissions(1 << 2);
    pub const DELETE: Permissions = Permissions(1 << 3);
    pub const SEARCH: Permissions = Permissions(1 << 4);
    pub const ALL: Permissions = Permissions(0b1_1111);
    /// v1 `read`.
    pub const V1_READ: Permissions = Permissions(Self::READ.0 | Self::SEARCH.0);
    /// v1 `write`.
    pub const V1_WRITE: Permissions = Permissions(Self::CREATE.0 | Self::UPDATE.0 | Self::DELETE.0);

    /// The letters in the order v2 requires; index `i` is bit `1 << i`.
    const LETTERS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every permission in `other` is also in `self`.
    #[must_use]
    pub const fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    #[must_use]
    pub const fn intersection(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    /// v2 letters: a non-empty subsequence of `cruds`, in that order, each letter at most once.
    #[must_use]
    pub fn parse_v2(s: &str) -> Option<Permissions> {
        let mut bits = 0u8;
        let mut next = 0usize; // letters before `next` may no longer appear
        for ch in s.chars() {
            let i = Self::LETTERS[next..].iter().position(|&l| l == ch)? + next;
            bits |= 1 << i;
            next = i + 1;
        }
        (bits != 0).then_some(Permissions(bits))
    }

    /// v1 words: `read`, `write` or `*`.
    #[must_use]
    pub fn parse_v1(s: &str) -> Option<Permissions> {
        match s {
            "read" => Some(Self::V1_READ),
            "write" => Some(Self::V1_WRITE),
            "*" => Some(Self::ALL),
            _ => None,
        }
    }
}

impl BitOr for Permissions {
    type Output = Permissions;
    fn bitor(self, rhs: Permissions) -> Permissions {
        self.union(rhs)
    }
}

impl BitAnd for Permissions {
    type Output = Permissions;
    fn bitand(self, rhs: Permissions) -> Permissions {
        self.intersection(rhs)
    }
}

/// The v2 letters, e.g. `rs`; empty for no permission.
impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, letter) in Self::LETTERS.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                f.write_char(*letter)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// Which resource types a scope reaches: all (`*`) or one, named by a syntactically valid
/// resource type name (an ASCII letter A-Z, then ASCII letters and digits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ResourceSelector(Option<String>);

impl ResourceSelector {
    /// `*`: every resource type.
    #[must_use]
    pub fn any() -> Self {
        Self(None)
    }

    /// `*` or a resource type name. Existence is the caller's check.
    pub fn parse(s: &str) -> Result<Self, ScopeProblem> {
        if s == "*" {
            return Ok(Self::any());
        }
        let mut chars = s.chars();
        let starts_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
        if starts_upper && s.len() <= MAX_NAME_BYTES && chars.all(|c| c.is_ascii_alphanumeric()) {
            Ok(Self(Some(s.to_owned())))
        } else {
            Err(ScopeProblem::BadResourceType)
        }
    }

    /// The resource type, or `None` for `*`.
    #[must_use]
    pub fn type_name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    #[must_use]
    pub fn is_any(&self) -> bool {
        self.0.is_none()
    }

    /// Whether a request on `resource_type` falls under this selector.
    #[must_use]
    pub fn matches(&self, resource_type: &str) -> bool {
        self.0.as_deref().is_none_or(|t| t == resource_type)
    }

    /// The types both selectors reach: `*` ∩ `T` is `T`, `T` ∩ `U` is nothing.
    fn intersect(&self, other: &Self) -> Option<Self> {
        match (&self.0, &other.0) {
            (None, _) => Some(other.clone()),
            (_, None) => Some(self.clone()),
            (Some(a), Some(b)) => (a == b).then(|| self.clone()),
        }
    }
}

impl fmt::Display for ResourceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or("*"))
    }
}

/// A SMART v2 granular-scope filter: FHIR search parameters as percent-decoded `(name, value)`
/// pairs, which all apply together. Kept sorted and without duplicates, so two filters that
/// differ only in order are equal. `+` is a literal plus, not a space (FHIR asks clients to
/// percent-encode both).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct QueryFilter {
    pairs: Vec<(String, String)>,
}

impl QueryFilter {
    /// Parses the text after `?`: `name=value&name=value`, percent-encoded.
    pub fn parse(raw: &str) -> Result<Self, ScopeProblem> {
        if raw.is_empty() {
            return Err(ScopeProblem::EmptyFilter);
        }
        if raw.len() > MAX_FILTER_BYTES {
            return Err(ScopeProblem::FilterTooLong);
        }
        let mut pairs = Vec::new();
        for part in raw.split('&') {
            if pairs.len() == MAX_FILTER_PARAMS {
                return Err(ScopeProblem::TooManyFilterParams);
            }
            let (name, value) = part.split_once('=').ok_or(ScopeProblem::BadFilterParam)?;
            let (name, value) = (percent_decode(name)?, percent_decode(value)?);
            if !is_param_name(&name) || value.is_empty() || value.chars().any(char::is_control) {
                return Err(ScopeProblem::BadFilterParam);
            }
            pairs.push((name, value));
        }
        pairs.sort();
        pairs.dedup();
        Ok(Self { pairs })
    }

    /// The decoded `(name, value)` pairs, sorted.
    #[must_use]
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// The canonical form: pairs sorted, values percent-encoded where a raw byte would not be a
/// valid scope character or would change how the filter splits.
impl fmt::Display for QueryFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_char('&')?;
            }
            f.write_str(name)?;
            f.write_char('=')?;
            for b in value.bytes() {
                if is_scope_char(b) && !matches!(b, b'%' | b'&' | b'=') {
                    f.write_char(char::from(b))?;
                } else {
                    write!(f, "%{b:02X}")?;
                }
            }
        }
        Ok(())
    }
}

/// A FHIR search parameter name, possibly with a modifier or chain (`code:in`, `subject:Patient.name`).
fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && s.len() <= MAX_NAME_BYTES
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn percent_decode(s: &str) -> Result<String, ScopeProblem> {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(ScopeProblem::BadPercentEncoding);
            };
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ScopeProblem::BadPercentEncoding)
}

/// RFC 6749 §3.3 `NQCHAR`: printable ASCII except space, `"` and `\`.
fn is_scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

/// The non-resource scopes Haven understands (OpenID Connect and SMART launch context).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum NamedScope {
    OpenId,
    FhirUser,
    Profile,
    Launch,
    LaunchPatient,
    LaunchEncounter,
    OfflineAccess,
    OnlineAccess,
}

impl NamedScope {
    pub const ALL: [NamedScope; 8] = [
        NamedScope::OpenId,
        NamedScope::FhirUser,
        NamedScope::Profile,
        NamedScope::Launch,
        NamedScope::LaunchPatient,
        NamedScope::LaunchEncounter,
        NamedScope::OfflineAccess,
        NamedScope::OnlineAccess,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NamedScope::OpenId => "openid",
            NamedScope::FhirUser => "fhirUser",
            NamedScope::Profile => "profile",
            NamedScope::Launch => "launch",
            NamedScope::LaunchPatient => "launch/patient",
            NamedScope::LaunchEncounter => "launch/encounter",
            NamedScope::OfflineAccess => "offline_access",
            NamedScope::OnlineAccess => "online_access",
        }
    }

    /// Scope tokens are case-sensitive (RFC 6749 §3.3): `OpenID` is not `openid`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

impl fmt::Display for NamedScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource scope, e.g. `patient/Observation.rs?category=…`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ResourceScope {
    pub context: Context,
    pub resource: ResourceSelector,
    /// May be empty only when built by hand; such a scope grants nothing and [`Scopes`] drops it.
    pub permissions: Permissions,
    pub filter: Option<QueryFilter>,
}

/// Written in v2 form.
impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.context, self.resource, self.permissions)?;
        match &self.filter {
            Some(filter) => write!(f, "?{filter}"),
            None => Ok(()),
        }
    }
}

/// One scope token.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Scope {
    Resource(ResourceScope),
    /// A non-resource scope (`openid`, `launch/patient`, …).
    Other(NamedScope),
}

impl FromStr for Scope {
    type Err = ScopeProblem;

    fn from_str(token: &str) -> Result<Self, ScopeProblem> {
        if token.is_empty() || !token.bytes().all(is_scope_char) {
            return Err(ScopeProblem::BadCharacter);
        }
        if let Some(named) = NamedScope::parse(token) {
            return Ok(Scope::Other(named));
        }
        let (context, rest) = token.split_once('/').ok_or(ScopeProblem::Unknown)?;
        let context = Context::parse(context).ok_or(ScopeProblem::Unknown)?;
        let (body, query) = match rest.split_once('?') {
            Some((body, query)) => (body, Some(query)),
            None => (rest, None),
        };
        let (resource, permissions) = body
            .split_once('.')
            .ok_or(ScopeProblem::MissingPermissions)?;
        let resource = ResourceSelector::parse(resource)?;
        let (permissions, v1) = match Permissions::parse_v1(permissions) {
            Some(p) => (p, true),
            None => (
                Permissions::parse_v2(permissions).ok_or(ScopeProblem::BadPermissions)?,
                false,
            ),
        };
        let filter = match query {
            None => None,
            Some(_) if v1 => return Err(ScopeProblem::FilterOnV1),
            Some(query) => Some(QueryFilter::parse(query)?),
        };
        Ok(Scope::Resource(ResourceScope {
            context,
            resource,
            permissions,
            filter,
        }))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(r) => r.fmt(f),
            Scope::Other(n) => n.fmt(f),
        }
    }
}

/// Why one scope token was not understood.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ScopeProblem {
    #[error("a scope may only hold printable ASCII other than '\"' and '\\'")]
    BadCharacter,
    #[error("not a scope this server knows")]
    Unknown,
    #[error("a resource scope needs '.' and permissions after the resource type")]
    MissingPermissions,
    #[error("the resource type must be '*' or a name such as 'Observation'")]
    BadResourceType,
    #[error("permissions must be 'read', 'write', '*', or letters from 'cruds' in that order")]
    BadPermissions,
    #[error("query filters need SMART v2 permissions ('.rs?…'), not 'read'/'write'/'*'")]
    FilterOnV1,
    #[error("'?' must be followed by a query filter")]
    EmptyFilter,
    #[error("the query filter is longer than {MAX_FILTER_BYTES} bytes")]
    FilterTooLong,
    #[error("the query filter has more than {MAX_FILTER_PARAMS} parameters")]
    TooManyFilterParams,
    #[error(
        "each query filter parameter must be 'name=value' with a search parameter name and a non-empty value"
    )]
    BadFilterParam,
    #[error("the query filter has an invalid percent-encoding or is not UTF-8")]
    BadPercentEncoding,
}

/// Why a scope string was refused as a whole.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("the scope string is {len} bytes long; at most {MAX_SCOPE_STRING_BYTES} are accepted")]
    TooLong { len: usize },
    #[error("the scope string holds more than {MAX_SCOPES} scopes")]
    TooMany,
    /// Only from [`Scopes::parse_strict`].
    #[error("invalid scope '{scope}': {problem}")]
    Invalid {
        scope: String,
        problem: ScopeProblem,
    },
}

/// A scope token [`Scopes::parse`] did not keep, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rejected {
    /// The token as the client sent it (bounded by [`MAX_SCOPE_STRING_BYTES`]).
    pub scope: String,
    pub problem: ScopeProblem,
}

/// What [`Scopes::parse`] understood, and what it dropped.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Parsed {
    pub scopes: Scopes,
    pub rejected: Vec<Rejected>,
}

/// How a set of scopes answers one access question; see the module docs on query filters.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Grant<'a> {
    Denied,
    /// An unfiltered scope grants the action.
    Unrestricted,
    /// Only filtered scopes grant it: the action is allowed on resources matching any of these.
    Filtered(Vec<&'a QueryFilter>),
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key {
    context: Context,
    resource: ResourceSelector,
    filter: Option<QueryFilter>,
}

/// A set of scopes. Resource scopes with the same context, resource selector and filter are
/// merged (`patient/Observation.r patient/Observation.s` is `patient/Observation.rs`); scopes
/// that are covered by broader ones are kept as they are, so a client finds what it asked for
/// in the granted string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    resources: BTreeMap<Key, Permissions>,
    named: BTreeSet<NamedScope>,
}

impl Scopes {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a space-separated scope string, keeping what it understands and returning the
    /// rest in [`Parsed::rejected`]. Runs of spaces are allowed; any other whitespace makes the
    /// token it is in invalid. Fails only when the string is over the size limits.
    pub fn parse(s: &str) -> Result<Parsed, ScopeError> {
        if s.len() > MAX_SCOPE_STRING_BYTES {
            return Err(ScopeError::TooLong { len: s.len() });
        }
        let tokens: Vec<&str> = s.split(' ').filter(|t| !t.is_empty()).collect();
        if tokens.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        let mut scopes = Scopes::new();
        let mut rejected = Vec::new();
        for token in tokens {
            match token.parse::<Scope>() {
                Ok(scope) => scopes.insert(scope),
                Err(problem) => rejected.push(Rejected {
                    scope: token.to_owned(),
                    problem,
                }),
            }
        }
        Ok(Parsed { scopes, rejected })
    }

    /// Like [`Scopes::parse`], but any token it does not understand fails the whole string.
    pub fn parse_strict(s: &str) -> Result<Self, ScopeError> {
        let parsed = Self::parse(s)?;
        match parsed.rejected.into_iter().next() {
            None => Ok(parsed.scopes),
            Some(Rejected { scope, problem }) => Err(ScopeError::Invalid { scope, problem }),
        }
    }

    /// Adds a scope, merging it with one of the same context, selector and filter.
    pub fn insert(&mut self, scope: Scope) {
        match scope {
            Scope::Other(named) => {
                self.named.insert(named);
            }
            Scope::Resource(r) => {
                self.add(
                    Key {
                        context: r.context,
                        resource: r.resource,
                        filter: r.filter,
                    },
                    r.permissions,
                );
            }
        }
    }

    fn add(&mut self, key: Key, permissions: Permissions) {
        if !permissions.is_empty() {
            let entry = self.resources.entry(key).or_default();
            *entry = *entry | permissions;
        }
    }

    /// How many scopes the canonical string holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.resources.len() + self.named.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scopes, named ones first, then resource scopes by context, selector and filter.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        let named = self.named.iter().map(|n| Scope::Other(*n));
        let resources = self.resources.iter().map(|(key, permissions)| {
            Scope::Resource(ResourceScope {
                context: key.context,
                resource: key.resource.clone(),
                permissions: *permissions,
                filter: key.filter.clone(),
            })
        });
        named.chain(resources)
    }

    /// Whether this set holds `scope`: a named scope (`has("openid")`), or a resource scope
    /// with the same context, selector and filter and at least its permissions. A wildcard
    /// does not count for a specific type here; use [`Scopes::permits`] for access questions.
    #[must_use]
    pub fn has(&self, scope: &str) -> bool {
        match scope.parse::<Scope>() {
            Ok(Scope::Other(named)) => self.named.contains(&named),
            Ok(Scope::Resource(r)) => {
                let key = Key {
                    context: r.context,
                    resource: r.resource,
                    filter: r.filter,
                };
                self.resources
                    .get(&key)
                    .is_some_and(|p| p.contains(r.permissions))
            }
            Err(_) => false,
        }
    }

    /// The contexts at least one resource scope is in.
    #[must_use]
    pub fn contexts(&self) -> BTreeSet<Context> {
        self.resources.keys().map(|k| k.context).collect()
    }

    fn granting(
        &self,
        context: Context,
        resource_type: &str,
        action: Action,
    ) -> impl Iterator<Item = &Key> {
        self.resources.iter().filter_map(move |(key, permissions)| {
            let grants = key.context == context
                && key.resource.matches(resource_type)
                && permissions.contains(action.permission());
            grants.then_some(key)
        })
    }

    /// Whether any scope in `context` grants `action` on `resource_type`. A filtered scope
    /// counts: when this is `true`, the caller must still apply [`Scopes::filters_for`] (or
    /// match on [`Scopes::grant`]).
    #[must_use]
    pub fn permits(&self, context: Context, resource_type: &str, action: Action) -> bool {
        self.granting(context, resource_type, action)
            .next()
            .is_some()
    }

    /// The full answer to "may `action` happen on `resource_type` in `context`".
    #[must_use]
    pub fn grant(&self, context: Context, resource_type: &str, action: Action) -> Grant<'_> {
        let mut filters = Vec::new();
        for key in self.granting(context, resource_type, action) {
            match &key.filter {
                None => return Grant::Unrestricted,
                Some(filter) => filters.push(filter),
            }
        }
        if filters.is_empty() {
            Grant::Denied
        } else {
            Grant::Filtered(filters)
        }
    }

    /// The filters the caller must apply (any one matching is enough) when only filtered scopes
    /// grant the action. Empty when an unfiltered scope grants it — and also when nothing does,
    /// so check [`Scopes::permits`] first, or use [`Scopes::grant`], which tells the two apart.
    #[must_use]
    pub fn filters_for(
        &self,
        context: Context,
        resource_type: &str,
        action: Action,
    ) -> Vec<&QueryFilter> {
        match self.grant(context, resource_type, action) {
            Grant::Filtered(filters) => filters,
            Grant::Denied | Grant::Unrestricted => Vec::new(),
        }
    }

    /// What a client may get: the access granted by both `self` (the request) and `allowed`
    /// (the client's registration or the user's consent). Per context, each requested scope is
    /// narrowed by each allowed one: selectors meet (`*` and `Observation` give `Observation`),
    /// permissions intersect, and filters must agree — a requested filter survives when the
    /// allowed scope is unfiltered or has the same filter, and an allowed filter is carried
    /// onto an unfiltered request. Different filters on both sides grant nothing. Named scopes
    /// are kept when both sides hold them. The result never permits what either side does not.
    #[must_use]
    pub fn intersect(&self, allowed: &Scopes) -> Scopes {
        let mut out = Scopes {
            resources: BTreeMap::new(),
            named: self.named.intersection(&allowed.named).copied().collect(),
        };
        for (req, &req_perms) in &self.resources {
            for (allow, &allow_perms) in &allowed.resources {
                if req.context != allow.context {
                    continue;
                }
                let Some(resource) = req.resource.intersect(&allow.resource) else {
                    continue;
                };
                let filter = match (&req.filter, &allow.filter) {
                    (None, None) => None,
                    (Some(f), None) | (None, Some(f)) => Some(f.clone()),
                    (Some(a), Some(b)) if a == b => Some(a.clone()),
                    (Some(_), Some(_)) => continue,
                };
                out.add(
                    Key {
                        context: req.context,
                        resource,
                        filter,
                    },
                    req_perms & allow_perms,
                );
            }
        }
        out
    }
}

/// The canonical scope string: v2 form, sorted, each scope once.
impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all: Vec<String> = self.iter().map(|s| s.to_string()).collect();
        all.sort();
        f.write_str(&all.join(" "))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// Strict: see [`Scopes::parse_strict`].
impl FromStr for Scopes {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, ScopeError> {
        Self::parse_strict(s)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes = Scopes::new();
        for scope in iter {
            scopes.insert(scope);
        }
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VITALS: &str =
        "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";

    fn strict(s: &str) -> Scopes {
        Scopes::parse_strict(s).unwrap()
    }

    fn problem(token: &str) -> ScopeProblem {
        token.parse::<Scope>().unwrap_err()
    }

    #[test]
    fn v1_scopes_are_written_in_v2_form() {
        assert_eq!(strict("patient/*.read").to_string(), "patient/*.rs");
        assert_eq!(
            strict("user/Observation.write").to_string(),
            "user/Observation.cud"
        );
        assert_eq!(strict("system/*.*").to_string(), "system/*.cruds");
        assert_eq!(strict("patient/*.read"), strict("patient/*.rs"));
    }

    #[test]
    fn v2_scopes_round_trip() {
        for s in [
            "patient/Observation.rs",
            "user/*.cruds",
            "system/Patient.r",
            "user/Encounter.cd",
        ] {
            assert_eq!(strict(s).to_string(), s);
        }
    }

    #[test]
    fn v2_letters_must_be_ordered_unique_and_present() {
        assert_eq!(
            Permissions::parse_v2("rs"),
            Some(Permissions::READ | Permissions::SEARCH)
        );
        assert_eq!(Permissions::parse_v2("cruds"), Some(Permissions::ALL));
        for bad in ["sr", "rrs", "", "x", "R", "crudsc", "dc", "rs "] {
            assert_eq!(Permissions::parse_v2(bad), None, "{bad:?}");
        }
        assert_eq!(
            problem("patient/Observation.sr"),
            ScopeProblem::BadPermissions
        );
        assert_eq!(
            problem("patient/Observation.rrs"),
            ScopeProblem::BadPermissions
        );
        assert_eq!(
            problem("patient/Observation.Read"),
            ScopeProblem::BadPermissions
        );
    }

    #[test]
    fn named_scopes_are_kept() {
        let all = "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access";
        let scopes = strict(all);
        assert_eq!(scopes.len(), 8);
        for name in all.split(' ') {
            assert!(scopes.has(name), "{name}");
        }
        assert!(scopes.contexts().is_empty());
        assert!(!scopes.has("email"));
    }

    #[test]
    fn unknown_and_malformed_scopes_are_rejected_not_fatal() {
        let parsed = Scopes::parse(
            "openid email patient/.rs patient/Observation. patient/Observation.rs? \
             launch/location OpenID clinician/*.read patient/observation.rs patient/Observation.rs",
        )
        .unwrap();
        assert_eq!(parsed.scopes.to_string(), "openid patient/Observation.rs");
        let rejected: Vec<(&str, ScopeProblem)> = parsed
            .rejected
            .iter()
            .map(|r| (r.scope.as_str(), r.problem))
            .collect();
        assert_eq!(
            rejected,
            [
                ("email", ScopeProblem::Unknown),
                ("patient/.rs", ScopeProblem::BadResourceType),
                ("patient/Observation.", ScopeProblem::BadPermissions),
                ("patient/Observation.rs?", ScopeProblem::EmptyFilter),
                ("launch/location", ScopeProblem::Unknown),
                ("OpenID", ScopeProblem::Unknown),
                ("clinician/*.read", ScopeProblem::Unknown),
                ("patient/observation.rs", ScopeProblem::BadResourceType),
            ]
        );
    }

    #[test]
    fn strict_parsing_names_the_first_bad_scope() {
        let err = Scopes::parse_strict("openid patient/Observation.sr launch").unwrap_err();
        assert_eq!(
            err,
            ScopeError::Invalid {
                scope: "patient/Observation.sr".into(),
                problem: ScopeProblem::BadPermissions
            }
        );
        assert!(err.to_string().contains("patient/Observation.sr"));
        assert!("openid bogus".parse::<Scopes>().is_err());
    }

    #[test]
    fn tricky_inputs() {
        assert!(strict("").is_empty());
        assert!(strict("   ").is_empty());
        assert_eq!(strict("  openid    launch  ").to_string(), "launch openid");
        // Tabs and newlines are not separators: the token that holds one is dropped.
        let parsed = Scopes::parse("openid\tlaunch profile\n").unwrap();
        assert!(parsed.scopes.is_empty());
        assert_eq!(parsed.rejected.len(), 2);
        for token in [
            "patient/Obsérvation.rs",
            "patient/Observation.rs\u{200b}",
            "openid\u{0}",
            "ｏｐｅｎｉｄ",
        ] {
            assert_eq!(problem(token), ScopeProblem::BadCharacter, "{token:?}");
        }
        assert_eq!(
            problem("patient/Observation"),
            ScopeProblem::MissingPermissions
        );
        assert_eq!(problem("patient/*"), ScopeProblem::MissingPermissions);
        assert_eq!(
            problem("patient/Observation.rs.rs"),
            ScopeProblem::BadPermissions
        );
        assert_eq!(
            problem("patient/Obs-ervation.rs"),
            ScopeProblem::BadResourceType
        );
        assert_eq!(problem("patient/**.rs"), ScopeProblem::BadResourceType);
        assert_eq!(
            problem("patient//Observation.rs"),
            ScopeProblem::BadResourceType
        );
        assert_eq!(
            problem("patient/1Observation.rs"),
            ScopeProblem::BadResourceType
        );
        assert_eq!(
            problem(&format!("patient/{}.rs", "A".repeat(65))),
            ScopeProblem::BadResourceType
        );
        assert_eq!(problem("/Observation.rs"), ScopeProblem::Unknown);
        assert_eq!(problem("Patient/Observation.rs"), ScopeProblem::Unknown);
        assert_eq!(
            problem("patient/*.read?category=x"),
            ScopeProblem::FilterOnV1
        );
        assert_eq!(problem("patient/*.*?category=x"), ScopeProblem::FilterOnV1);
    }

    #[test]
    fn input_is_capped_at_4_kib_and_100_scopes() {
        let hundred = vec!["openid"; 100].join(" ");
        assert_eq!(strict(&hundred).len(), 1);
        let hundred_and_one = vec!["openid"; 101].join(" ");
        assert_eq!(
            Scopes::parse(&hundred_and_one).unwrap_err(),
            ScopeError::TooMany
        );
        assert_eq!(
            Scopes::parse_strict(&hundred_and_one).unwrap_err(),
            ScopeError::TooMany
        );

        let long = format!("openid{}", " ".repeat(MAX_SCOPE_STRING_BYTES - 6));
        assert_eq!(long.len(), MAX_SCOPE_STRING_BYTES);
        assert!(Scopes::parse(&long).is_ok());
        let too_long = format!("{long} ");
        assert_eq!(
            Scopes::parse(&too_long).unwrap_err(),
            ScopeError::TooLong { len: 4097 }
        );
        let huge = "x".repeat(1 << 20);
        assert!(matches!(
            Scopes::parse(&huge),
            Err(ScopeError::TooLong { .. })
        ));
    }

    #[test]
    fn granular_filters_parse_decode_and_sort() {
        let scopes = strict(&format!("patient/Observation.rs?{VITALS}"));
        assert_eq!(
            scopes.to_string(),
            format!("patient/Observation.rs?{VITALS}")
        );
        let Some(Scope::Resource(r)) = scopes.iter().next() else {
            panic!("one resource scope")
        };
        let filter = r.filter.unwrap();
        assert_eq!(
            filter.pairs(),
            [(
                "category".to_owned(),
                "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs".to_owned()
            )]
        );

        let a = strict("patient/Observation.rs?code%3Ain=urn%3Aoid%3A1.2&status=final%20x");
        let b =
            strict("patient/Observation.rs?status=final%20x&code:in=urn:oid:1.2&status=final%20x");
        assert_eq!(
            a, b,
            "order, duplicates and encoding of safe characters do not matter"
        );
        assert_eq!(
            a.to_string(),
            "patient/Observation.rs?code:in=urn:oid:1.2&status=final%20x"
        );

        let odd = strict("user/*.s?name=%C3%A9l%C3%A8ve%26co%3D1+2");
        let Some(Scope::Resource(r)) = odd.iter().next() else {
            panic!()
        };
        assert_eq!(r.filter.as_ref().unwrap().pairs()[0].1, "élève&co=1+2");
        assert_eq!(odd.to_string(), "user/*.s?name=%C3%A9l%C3%A8ve%26co%3D1+2");
        assert_eq!(strict(&odd.to_string()), odd);
    }

    #[test]
    fn malformed_filters() {
        let cases = [
            ("patient/Observation.rs?", ScopeProblem::EmptyFilter),
            (
                "patient/Observation.rs?category",
                ScopeProblem::BadFilterParam,
            ),
            (
                "patient/Observation.rs?category=",
                ScopeProblem::BadFilterParam,
            ),
            ("patient/Observation.rs?=x", ScopeProblem::BadFilterParam),
            (
                "patient/Observation.rs?a=1&&b=2",
                ScopeProblem::BadFilterParam,
            ),
            ("patient/Observation.rs?a=1&", ScopeProblem::BadFilterParam),
            ("patient/Observation.rs?1a=1", ScopeProblem::BadFilterParam),
            (
                "patient/Observation.rs?a%20b=1",
                ScopeProblem::BadFilterParam,
            ),
            ("patient/Observation.rs?a=%0A", ScopeProblem::BadFilterParam),
            (
                "patient/Observation.rs?a=%zz",
                ScopeProblem::BadPercentEncoding,
            ),
            (
                "patient/Observation.rs?a=%4",
                ScopeProblem::BadPercentEncoding,
            ),
            (
                "patient/Observation.rs?a=%FF",
                ScopeProblem::BadPercentEncoding,
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(problem(token), expected, "{token}");
        }
        let eight: Vec<String> = (0..8).map(|i| format!("p{i}=v")).collect();
        assert!(
            format!("patient/Observation.rs?{}", eight.join("&"))
                .parse::<Scope>()
                .is_ok()
        );
        let nine: Vec<String> = (0..9).map(|i| format!("p{i}=v")).collect();
        assert_eq!(
            problem(&format!("patient/Observation.rs?{}", nine.join("&"))),
            ScopeProblem::TooManyFilterParams
        );
        let at_limit = format!("a={}", "x".repeat(MAX_FILTER_BYTES - 2));
        assert!(
            format!("patient/Observation.rs?{at_limit}")
                .parse::<Scope>()
                .is_ok()
        );
        assert_eq!(
            problem(&format!("patient/Observation.rs?{at_limit}x")),
            ScopeProblem::FilterTooLong
        );
    }

    #[test]
    fn same_scopes_merge_and_sort() {
        let scopes = strict(
            "patient/Observation.s openid patient/Observation.r patient/Observation.read openid",
        );
        assert_eq!(scopes.to_string(), "openid patient/Observation.rs");
        assert_eq!(scopes.len(), 2);
        // A narrower scope next to a broader one is kept, so the client finds what it asked for.
        assert_eq!(
            strict("patient/*.rs patient/Observation.rs").to_string(),
            "patient/*.rs patient/Observation.rs"
        );
    }

    #[test]
    fn permits_by_context_type_and_action() {
        let scopes = strict("patient/*.read user/Observation.cu system/Patient.s");
        assert!(scopes.permits(Context::Patient, "Condition", Action::Read));
        assert!(scopes.permits(Context::Patient, "Condition", Action::Search));
        assert!(!scopes.permits(Context::Patient, "Condition", Action::Create));
        assert!(scopes.permits(Context::User, "Observation", Action::Create));
        assert!(scopes.permits(Context::User, "Observation", Action::Update));
        assert!(!scopes.permits(Context::User, "Observation", Action::Read));
        assert!(!scopes.permits(Context::User, "Condition", Action::Create));
        assert!(scopes.permits(Context::System, "Patient", Action::Search));
        assert!(!scopes.permits(Context::System, "Patient", Action::Delete));
        assert!(!scopes.permits(Context::System, "Observation", Action::Search));
        assert_eq!(scopes.contexts(), BTreeSet::from(Context::ALL));
        assert!(!Scopes::new().permits(Context::Patient, "Patient", Action::Read));
    }

    #[test]
    fn filtered_scopes_permit_but_hand_back_their_filters() {
        let scopes = strict(&format!(
            "patient/Observation.rs?{VITALS} patient/Observation.r?category=laboratory"
        ));
        assert!(scopes.permits(Context::Patient, "Observation", Action::Read));
        assert!(scopes.permits(Context::Patient, "Observation", Action::Search));
        assert!(!scopes.permits(Context::Patient, "Condition", Action::Read));
        let filters = scopes.filters_for(Context::Patient, "Observation", Action::Read);
        assert_eq!(filters.len(), 2);
        assert_eq!(
            scopes
                .filters_for(Context::Patient, "Observation", Action::Search)
                .len(),
            1
        );
        assert_eq!(
            scopes.grant(Context::Patient, "Condition", Action::Read),
            Grant::Denied
        );

        // One unfiltered grant makes the filters moot.
        let mut wider = scopes.clone();
        wider.insert("patient/Observation.r".parse().unwrap());
        assert_eq!(
            wider.grant(Context::Patient, "Observation", Action::Read),
            Grant::Unrestricted
        );
        assert!(
            wider
                .filters_for(Context::Patient, "Observation", Action::Read)
                .is_empty()
        );
        assert!(matches!(
            wider.grant(Context::Patient, "Observation", Action::Search),
            Grant::Filtered(f) if f.len() == 1
        ));
    }

    #[test]
    fn has_checks_named_and_exact_resource_scopes() {
        let scopes = strict("openid patient/Observation.rs patient/*.r");
        assert!(scopes.has("openid"));
        assert!(scopes.has("patient/Observation.r"));
        assert!(scopes.has("patient/Observation.read"));
        assert!(!scopes.has("patient/Observation.crs"));
        assert!(
            !scopes.has("patient/Condition.r"),
            "has() is about the string, not access"
        );
        assert!(!scopes.has("fhirUser"));
        assert!(!scopes.has("not a scope"));
    }

    #[test]
    fn intersect_grants_what_both_sides_allow() {
        let requested = strict(
            "openid fhirUser launch/patient patient/Observation.rs patient/Condition.cruds user/*.r",
        );
        let allowed = strict("openid launch/patient patient/*.cruds user/Patient.rs");
        assert_eq!(
            requested.intersect(&allowed).to_string(),
            "launch/patient openid patient/Condition.cruds patient/Observation.rs user/Patient.r"
        );
        // Per-letter grants on the allowed side add up.
        let allowed = strict("patient/Observation.r patient/Observation.s");
        assert_eq!(
            strict("patient/Observation.rs")
                .intersect(&allowed)
                .to_string(),
            "patient/Observation.rs"
        );
        assert_eq!(
            strict("patient/Observation.cruds")
                .intersect(&strict("patient/Observation.read"))
                .to_string(),
            "patient/Observation.rs"
        );
        // Contexts do not mix.
        assert!(
            strict("patient/*.rs")
                .intersect(&strict("user/*.rs"))
                .is_empty()
        );
        // Requested wildcard, specific allowance: only the allowed types.
        assert_eq!(
            strict("patient/*.rs")
                .intersect(&strict("patient/Observation.r patient/Condition.s"))
                .to_string(),
            "patient/Condition.s patient/Observation.r"
        );
        assert!(
            strict("patient/Observation.rs")
                .intersect(&strict("patient/Condition.rs"))
                .is_empty()
        );
        assert!(
            strict("patient/Observation.c")
                .intersect(&strict("patient/Observation.rs"))
                .is_empty()
        );
    }

    #[test]
    fn intersect_filters() {
        let vitals = format!("patient/Observation.rs?{VITALS}");
        let labs = "patient/Observation.rs?category=laboratory";
        // A requested filter survives an unfiltered or identical allowance.
        assert_eq!(
            strict(&vitals).intersect(&strict("patient/*.cruds")),
            strict(&vitals)
        );
        assert_eq!(strict(&vitals).intersect(&strict(&vitals)), strict(&vitals));
        // Not a different one.
        assert!(strict(&vitals).intersect(&strict(labs)).is_empty());
        // An allowed filter narrows an unfiltered request.
        assert_eq!(
            strict("patient/Observation.rs").intersect(&strict(labs)),
            strict(labs)
        );
        assert_eq!(
            strict("patient/*.r").intersect(&strict(labs)).to_string(),
            "patient/Observation.r?category=laboratory"
        );
    }

    #[test]
    fn permissions_display_and_algebra() {
        assert_eq!(Permissions::ALL.to_string(), "cruds");
        assert_eq!(Permissions::V1_WRITE.to_string(), "cud");
        assert_eq!(Permissions::NONE.to_string(), "");
        assert!(Permissions::ALL.contains(Permissions::V1_READ));
        assert!(!Permissions::V1_READ.contains(Permissions::ALL));
        assert_eq!(
            Permissions::V1_READ & Permissions::V1_WRITE,
            Permissions::NONE
        );
        assert_eq!(
            Permissions::V1_READ | Permissions::V1_WRITE,
            Permissions::ALL
        );
        for action in Action::ALL {
            assert!(Permissions::ALL.contains(action.permission()));
        }
        // A hand-built scope without permissions grants nothing and is not kept.
        let mut scopes = Scopes::new();
        scopes.insert(Scope::Resource(ResourceScope {
            context: Context::User,
            resource: ResourceSelector::any(),
            permissions: Permissions::NONE,
            filter: None,
        }));
        assert!(scopes.is_empty());
    }

    fn token() -> impl Strategy<Value = String> {
        let context = prop::sample::select(vec!["patient", "user", "system"]);
        let resource = prop::sample::select(vec!["*", "Observation", "Patient", "Condition"]);
        let perms = prop_oneof![
            prop::sample::select(vec!["read", "write", "*"]).prop_map(str::to_owned),
            (1u8..32).prop_map(|bits| Permissions(bits).to_string()),
        ];
        let filter = prop::option::of(prop::sample::select(vec![
            "category=laboratory",
            "category=vital-signs",
            "status=final&category=laboratory",
        ]));
        let resource_scope = (context, resource, perms, filter).prop_map(|(c, r, p, f)| match f {
            Some(f) if !matches!(p.as_str(), "read" | "write" | "*") => format!("{c}/{r}.{p}?{f}"),
            _ => format!("{c}/{r}.{p}"),
        });
        prop_oneof![
            3 => resource_scope,
            1 => prop::sample::select(vec!["openid", "launch", "fhirUser", "bogus", "patient/x.rs"])
                .prop_map(str::to_owned),
        ]
    }

    fn scope_string() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 0..8).prop_map(|t| t.join(" "))
    }

    proptest! {
        #[test]
        fn canonical_form_is_stable(s in scope_string()) {
            let scopes = Scopes::parse(&s).unwrap().scopes;
            let canonical = scopes.to_string();
            let again = Scopes::parse_strict(&canonical).unwrap();
            prop_assert_eq!(&again, &scopes);
            prop_assert_eq!(again.to_string(), canonical);
        }

        #[test]
        fn intersect_never_widens_and_is_symmetric(a in scope_string(), b in scope_string()) {
            let a = Scopes::parse(&a).unwrap().scopes;
            let b = Scopes::parse(&b).unwrap().scopes;
            let both = a.intersect(&b);
            prop_assert_eq!(&both, &b.intersect(&a));
            for context in Context::ALL {
                for ty in ["Observation", "Patient", "Condition", "Encounter"] {
                    for action in Action::ALL {
                        if both.permits(context, ty, action) {
                            prop_assert!(a.permits(context, ty, action) && b.permits(context, ty, action));
                        }
                        let unrestricted = |s: &Scopes| s.grant(context, ty, action) == Grant::Unrestricted;
                        prop_assert_eq!(unrestricted(&both), unrestricted(&a) && unrestricted(&b));
                    }
                }
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = Scopes::parse(&s);
        }
    }
}
