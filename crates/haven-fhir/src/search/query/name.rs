//! The name side of a criterion (R4 `search.html#chaining`, `#has`): a parameter name read
//! into its syntax (`code[:modifier]`, a chain `ref[:Type].inner`, a reverse chain
//! `_has:Type:ref:inner`), then resolved against the search-parameter table of the types the
//! criterion applies to.
//!
//! Reading comes first and is purely syntactic, so that a chain deeper than
//! [`MAX_CHAIN_DEPTH`] is refused before any lookup (and recursion stays bounded whatever the
//! input). Chains and `_has` count together towards that depth.
//!
//! An untyped chain (`subject.name`) fans out to every target type of the reference that has
//! the next parameter; across the whole criterion at most [`MAX_CHAIN_FANOUT`] such
//! (type, criterion) branches are built, because a reference such as Provenance `target` may
//! point at any of 145 types and chaining two of them would multiply.

use super::value::{self, a, list, type_modifier};
use super::{Criterion, Fail, MAX_CHAIN_DEPTH, ParseOptions, ProblemKind};
use crate::model::{ResourceType, definitions};
use crate::search::{ParamType, SearchParam};

/// Most (target type, criterion) branches the untyped chains and `_has` of one parameter
/// occurrence may build.
pub(super) const MAX_CHAIN_FANOUT: usize = 256;

/// A parameter name, read but not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Name<'a> {
    /// `code` or `code:modifier`.
    Param {
        code: &'a str,
        modifier: Option<&'a str>,
    },
    /// `code[:Type].inner`.
    Chain {
        code: &'a str,
        target: Option<&'a str>,
        inner: Box<Name<'a>>,
    },
    /// `_has:source:param:inner`.
    Has {
        source: &'a str,
        param: &'a str,
        inner: Box<Name<'a>>,
    },
}

/// Reads a parameter name.
pub(super) fn read(name: &str) -> Result<Name<'_>, Fail> {
    read_at(name, 0)
}

fn read_at(name: &str, depth: usize) -> Result<Name<'_>, Fail> {
    let too_deep = || {
        Fail::invalid(format!(
            "the parameter goes more than {MAX_CHAIN_DEPTH} links deep (chained parameters \
             and _has together); at most {MAX_CHAIN_DEPTH} are allowed, split the search"
        ))
    };
    if name == "_has" || name.starts_with("_has:") || name.starts_with("_has.") {
        if depth >= MAX_CHAIN_DEPTH {
            return Err(too_deep());
        }
        let syntax = || {
            Fail::invalid(
                "_has is written _has:Type:reference-parameter:parameter, e.g. \
                 _has:Observation:patient:code=1234-5"
                    .to_owned(),
            )
        };
        let rest = name.strip_prefix("_has:").ok_or_else(syntax)?;
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax());
        };
        if source.is_empty() || param.is_empty() || inner.is_empty() {
            return Err(syntax());
        }
        let inner = read_at(inner, depth + 1)?;
        return Ok(Name::Has {
            source,
            param,
            inner: Box::new(inner),
        });
    }
    if let Some((head, tail)) = name.split_once('.') {
        if depth >= MAX_CHAIN_DEPTH {
            return Err(too_deep());
        }
        let (code, target) = match head.split_once(':') {
            Some((code, target)) => (code, Some(target)),
            None => (head, None),
        };
        if code.is_empty() || tail.is_empty() || target.is_some_and(str::is_empty) {
            return Err(Fail::invalid(
                "a chained parameter is written reference.parameter or \
                 reference:Type.parameter, e.g. subject:Patient.name"
                    .to_owned(),
            ));
        }
        let inner = read_at(tail, depth + 1)?;
        return Ok(Name::Chain {
            code,
            target,
            inner: Box::new(inner),
        });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    if code.is_empty() {
        return Err(Fail::unknown(
            "the parameter has no name; write name=value or name:modifier=value".to_owned(),
        ));
    }
    Ok(Name::Param { code, modifier })
}

/// Resolves names against the parameter table, tracking the fan-out budget of one
/// occurrence.
pub(super) struct Resolver<'o> {
    options: &'o ParseOptions<'o>,
    budget: usize,
}

impl<'o> Resolver<'o> {
    pub(super) fn new(options: &'o ParseOptions<'o>) -> Self {
        Resolver {
            options,
            budget: MAX_CHAIN_FANOUT,
        }
    }

    /// The criterion `name=raw` on resources of any of the `scope` types (non-empty).
    pub(super) fn resolve(
        &mut self,
        scope: &[ResourceType],
        name: &Name<'_>,
        raw: &str,
    ) -> Result<Criterion, Fail> {
        match name {
            Name::Param { code, modifier } => {
                let param = lookup(scope, code)?;
                value::criterion(param, *modifier, raw, self.options)
            }
            Name::Chain {
                code,
                target,
                inner,
            } => self.chain(scope, code, *target, inner, raw),
            Name::Has {
                source,
                param,
                inner,
            } => self.has(scope, source, param, inner, raw),
        }
    }

    fn chain(
        &mut self,
        scope: &[ResourceType],
        code: &str,
        target: Option<&str>,
        inner: &Name<'_>,
        raw: &str,
    ) -> Result<Criterion, Fail> {
        let param = lookup(scope, code)?;
        if !param.is_supported() {
            return Err(Fail::unsupported(format!(
                "Haven does not support the search parameter `{code}`; remove it from the search"
            )));
        }
        if param.param_type != ParamType::Reference {
            return Err(Fail::invalid(format!(
                "`{code}` is a {} parameter; only reference parameters can be chained",
                param.param_type.as_str()
            )));
        }
        let candidates: Vec<ResourceType> = match target {
            Some(text) => {
                let ty = ResourceType::parse(text).ok_or_else(|| {
                    Fail::invalid(format!(
                        "in `{code}:{text}.`, `{text}` is not a resource type; write \
                         {code}:Type.parameter with a type such as Patient"
                    ))
                })?;
                vec![type_modifier(param, ty)?]
            }
            None => param
                .targets
                .iter()
                .copied()
                .filter(|&ty| applies(ty, inner))
                .collect(),
        };
        if candidates.is_empty() {
            let next = first_code(inner);
            return Err(Fail::unknown(format!(
                "no type that `{code}` refers to ({}) has {} search parameter `{next}`; \
                 check the name, or give the type ({code}:Type.{next})",
                if param.targets.is_empty() {
                    "any".to_owned()
                } else {
                    list(&param.targets)
                },
                if matches!(inner, Name::Chain { .. }) {
                    "a reference"
                } else {
                    "a"
                },
            )));
        }
        self.spend(candidates.len(), code)?;
        let mut targets = Vec::with_capacity(candidates.len());
        let mut worst: Option<Fail> = None;
        for ty in candidates {
            match self.resolve(&[ty], inner, raw) {
                Ok(criterion) => targets.push((ty, Box::new(criterion))),
                Err(fail) => {
                    if worst
                        .as_ref()
                        .is_none_or(|w| rank(fail.kind) > rank(w.kind))
                    {
                        worst = Some(fail);
                    }
                }
            }
        }
        // A type on which the inner parameter does not apply as written (an unknown
        // modifier for its type) is left out; anything worse fails the whole chain.
        match worst {
            Some(fail) if targets.is_empty() || fail.kind != ProblemKind::Unknown => Err(fail),
            _ => Ok(Criterion::Chain { param, targets }),
        }
    }

    fn has(
        &mut self,
        scope: &[ResourceType],
        source: &str,
        code: &str,
        inner: &Name<'_>,
        raw: &str,
    ) -> Result<Criterion, Fail> {
        let source_type = ResourceType::parse(source).ok_or_else(|| {
            Fail::invalid(format!(
                "in _has:{source}:..., `{source}` is not a resource type; write \
                 _has:Type:reference-parameter:parameter"
            ))
        })?;
        let param = definitions()
            .search_param(source_type, code)
            .ok_or_else(|| {
                Fail::unknown(format!(
                    "{source_type} has no search parameter `{code}`, named in _has"
                ))
            })?;
        if !param.is_supported() {
            return Err(Fail::unsupported(format!(
                "Haven does not support the search parameter `{code}` of {source_type}"
            )));
        }
        if param.param_type != ParamType::Reference {
            return Err(Fail::invalid(format!(
                "in _has, `{code}` of {source_type} is a {} parameter; _has needs a reference \
                 parameter that points back at the resources searched",
                param.param_type.as_str()
            )));
        }
        let unreachable: Vec<ResourceType> = scope
            .iter()
            .copied()
            .filter(|ty| !param.targets.is_empty() && param.targets.binary_search(ty).is_err())
            .collect();
        if let [only] = scope
            && !unreachable.is_empty()
        {
            return Err(Fail::invalid(format!(
                "in _has, `{code}` of {source_type} never refers to {}; it refers to {}",
                a(*only),
                list(&param.targets)
            )));
        }
        if !unreachable.is_empty() {
            return Err(Fail::unknown(format!(
                "_has:{source_type}:{code} only applies to resources `{code}` refers to ({}); \
                 search one of those types, or name one in _type",
                list(&param.targets)
            )));
        }
        self.spend(1, code)?;
        let inner = self.resolve(&[source_type], inner, raw)?;
        Ok(Criterion::Has {
            source: source_type,
            param,
            inner: Box::new(inner),
        })
    }

    fn spend(&mut self, branches: usize, code: &str) -> Result<(), Fail> {
        self.budget = self.budget.checked_sub(branches).ok_or_else(|| {
            Fail::invalid(format!(
                "the chain through `{code}` reaches too many resource types (more than \
                 {MAX_CHAIN_FANOUT} branches); give the target type ({code}:Type.parameter)"
            ))
        })?;
        Ok(())
    }
}

/// Whether `name` can apply to resources of type `ty` (for the candidates of an untyped
/// chain): the type has the parameter, or for `_has`, the reverse reference can point at it.
fn applies(ty: ResourceType, name: &Name<'_>) -> bool {
    match name {
        Name::Param { code, .. } => definitions().search_param(ty, code).is_some(),
        // Only types on which the next link is a reference can continue the chain.
        Name::Chain { code, .. } => definitions()
            .search_param(ty, code)
            .is_some_and(|p| p.param_type == ParamType::Reference),
        Name::Has { source, param, .. } => ResourceType::parse(source)
            .and_then(|s| definitions().search_param(s, param))
            .is_some_and(|p| p.targets.is_empty() || p.targets.binary_search(&ty).is_ok()),
    }
}

fn first_code<'a>(name: &Name<'a>) -> &'a str {
    match name {
        Name::Param { code, .. } | Name::Chain { code, .. } => code,
        Name::Has { .. } => "_has",
    }
}

/// How bad a failure is, for choosing which one a fanned-out chain reports.
fn rank(kind: ProblemKind) -> u8 {
    match kind {
        ProblemKind::Unknown => 0,
        ProblemKind::Unsupported => 1,
        ProblemKind::Invalid => 2,
    }
}

/// The parameter `code` shared by every type of `scope`: for one type, its parameter; for a
/// system-level search, one whose definition covers all the types searched (`_id`,
/// `_lastUpdated`, ...; `family` for `_type=Patient,Practitioner`).
pub(super) fn lookup(scope: &[ResourceType], code: &str) -> Result<&'static SearchParam, Fail> {
    let defs = definitions();
    let found = scope
        .iter()
        .find_map(|&ty| defs.search_param(ty, code).map(|p| (ty, p)));
    let Some((_, param)) = found else {
        return Err(Fail::unknown(match scope {
            [only] => format!(
                "{only} has no search parameter `{code}`; the CapabilityStatement lists the \
                 parameters of each type"
            ),
            _ => format!(
                "no resource type searched has a search parameter `{code}`; the \
                 CapabilityStatement lists the parameters of each type"
            ),
        }));
    };
    let shared = scope.iter().all(|&ty| {
        defs.search_param(ty, code)
            .is_some_and(|p| std::ptr::eq(p, param))
    });
    if !shared {
        let example = found.map_or("Patient", |(ty, _)| ty.as_str());
        return Err(Fail::unknown(format!(
            "`{code}` is not a search parameter of every type searched; search one type \
             (e.g. GET [base]/{example}?{code}=...) or name a single type in _type"
        )));
    }
    Ok(param)
}
