//! The query kinds of the search benchmark, and the queries of each kind that the population
//! makes: with values that exist, and the number of resources each must match, known from the
//! generator rather than from the server.

use clap::ValueEnum;
use time::Date;

use crate::scenarios::FHIR;
use crate::synth::population::{Facts, LOINC, MRN_SYSTEM, mrn, patient_id};

/// Most distinct queries a kind cycles through.
const MAX_QUERIES: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// `Patient?identifier=system|MRN`
    Identifier,
    /// `Patient?family=X&birthdate=YYYY-MM-DD`
    #[value(name = "family+birthdate")]
    FamilyBirthdate,
    /// `Observation?subject=Patient/id&code=loinc|c&date=geY-01-01&date=leY-12-31`
    ObsSubjectCodeDate,
    /// `Patient?_has:Observation:patient:code=loinc|rare`
    Has,
    /// `Patient?_has:Observation:patient:code=loinc|common&family=X`
    #[value(name = "has-common+family")]
    HasCommonFamily,
    /// `Observation?code=loinc|common&_sort=-date&_count=20`
    SortLarge,
    /// `Observation?code=loinc|common&_total=accurate&_count=1`
    TotalAccurate,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Identifier => "identifier",
            Kind::FamilyBirthdate => "family+birthdate",
            Kind::ObsSubjectCodeDate => "obs-subject-code-date",
            Kind::Has => "has",
            Kind::HasCommonFamily => "has-common+family",
            Kind::SortLarge => "sort-large",
            Kind::TotalAccurate => "total-accurate",
        }
    }

    /// Whether the kind is one of the selective searches with the 20 ms p99 target.
    pub fn selective(self) -> bool {
        matches!(
            self,
            Kind::Identifier | Kind::FamilyBirthdate | Kind::ObsSubjectCodeDate | Kind::Has
        )
    }
}

/// One search, with the values it is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Identifier {
        k: u64,
    },
    FamilyBirthdate {
        family: &'static str,
        birth: Date,
    },
    ObsSubjectCodeDate {
        k: u64,
        code: &'static str,
        year: i32,
    },
    Has {
        code: &'static str,
    },
    HasCommonFamily {
        code: &'static str,
        family: &'static str,
    },
    SortLarge {
        code: &'static str,
    },
    TotalAccurate {
        code: &'static str,
    },
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn token(system: &str, code: &str) -> String {
    encode(&format!("{system}|{code}"))
}

/// Whether the normalized (lower-case, ASCII names) `value` starts with `query`: the default
/// string match of FHIR search.
fn starts_with(value: &str, query: &str) -> bool {
    value
        .to_ascii_lowercase()
        .starts_with(&query.to_ascii_lowercase())
}

impl Query {
    /// The resource type searched.
    pub fn resource_type(&self) -> &'static str {
        match self {
            Query::ObsSubjectCodeDate { .. }
            | Query::SortLarge { .. }
            | Query::TotalAccurate { .. } => "Observation",
            _ => "Patient",
        }
    }

    /// The search criteria, as a query string (no result parameters).
    pub fn criteria(&self) -> String {
        match self {
            Query::Identifier { k } => format!("identifier={}", token(MRN_SYSTEM, &mrn(*k))),
            Query::FamilyBirthdate { family, birth } => {
                format!("family={}&birthdate={birth}", encode(family))
            }
            Query::ObsSubjectCodeDate { k, code, year } => format!(
                "subject=Patient/{}&code={}&date=ge{year}-01-01&date=le{year}-12-31",
                patient_id(*k),
                token(LOINC, code)
            ),
            Query::Has { code } => format!("_has:Observation:patient:code={}", token(LOINC, code)),
            Query::HasCommonFamily { code, family } => format!(
                "_has:Observation:patient:code={}&family={}",
                token(LOINC, code),
                encode(family)
            ),
            Query::SortLarge { code } | Query::TotalAccurate { code } => {
                format!("code={}", token(LOINC, code))
            }
        }
    }

    /// The result parameters the benchmark adds.
    fn result_parameters(&self) -> &'static str {
        match self {
            Query::SortLarge { .. } => "&_sort=-date&_count=20",
            Query::TotalAccurate { .. } => "&_total=accurate&_count=1",
            _ => "",
        }
    }

    /// The path of the measured request.
    pub fn path(&self) -> String {
        format!(
            "{FHIR}/{}?{}{}",
            self.resource_type(),
            self.criteria(),
            self.result_parameters()
        )
    }

    /// The path of a request that only counts the matches (`_summary=count`).
    pub fn count_path(&self) -> String {
        format!(
            "{FHIR}/{}?{}&_summary=count",
            self.resource_type(),
            self.criteria()
        )
    }

    /// How many of one patient's resources the query matches.
    pub fn matches_in(&self, f: &Facts) -> u64 {
        let has_code = |code: &str| f.observations.iter().any(|(c, _)| *c == code);
        let has_family = |family: &str| f.families.iter().any(|n| starts_with(n, family));
        let observations = |code: &str, year: Option<i32>| {
            f.observations
                .iter()
                .filter(|(c, at)| *c == code && year.is_none_or(|y| at.date.year() == y))
                .count() as u64
        };
        match self {
            Query::Identifier { k } => u64::from(f.k == *k),
            Query::FamilyBirthdate { family, birth } => {
                u64::from(f.birth == *birth && has_family(family))
            }
            Query::ObsSubjectCodeDate { k, code, year } if f.k == *k => {
                observations(code, Some(*year))
            }
            Query::ObsSubjectCodeDate { .. } => 0,
            Query::Has { code } => u64::from(has_code(code)),
            Query::HasCommonFamily { code, family } => {
                u64::from(has_code(code) && has_family(family))
            }
            Query::SortLarge { code } | Query::TotalAccurate { code } => observations(code, None),
        }
    }

    /// How many resources of the population the query matches.
    pub fn expected(&self, population: &[Facts]) -> u64 {
        match self {
            Query::Identifier { k } | Query::ObsSubjectCodeDate { k, .. } => population
                .get(usize::try_from(*k).unwrap_or(usize::MAX))
                .map_or(0, |f| self.matches_in(f)),
            _ => population.iter().map(|f| self.matches_in(f)).sum(),
        }
    }
}

/// The `i`-th patient sampled for queries: spread over the whole population.
fn sample(i: u64, patients: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % patients.max(1)
}

/// The LOINC code most observations carry, and how many do.
pub fn most_common_code(population: &[Facts]) -> (&'static str, u64) {
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    for f in population {
        for (code, _) in &f.observations {
            match counts.iter_mut().find(|(c, _)| c == code) {
                Some(entry) => entry.1 += 1,
                None => counts.push((code, 1)),
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(c, n)| (*n, *c))
        .unwrap_or(("8867-4", 0))
}

/// The queries of `kind` over `population`, in the order the load cycles through them.
pub fn queries(kind: Kind, population: &[Facts], rare_codes: &[&'static str]) -> Vec<Query> {
    let n = population.len() as u64;
    let (common, _) = most_common_code(population);
    let sampled = || {
        (0..MAX_QUERIES.min(n)).filter_map(move |i| {
            population.get(usize::try_from(sample(i, n)).unwrap_or(usize::MAX))
        })
    };
    match kind {
        Kind::Identifier => sampled().map(|f| Query::Identifier { k: f.k }).collect(),
        Kind::FamilyBirthdate => sampled()
            .filter_map(|f| {
                Some(Query::FamilyBirthdate {
                    family: f.families.first()?,
                    birth: f.birth,
                })
            })
            .collect(),
        Kind::ObsSubjectCodeDate => sampled()
            .filter_map(|f| {
                let pick = sample(f.k ^ 0x0b5, f.observations.len() as u64);
                let (code, at) = f.observations.get(usize::try_from(pick).ok()?)?;
                Some(Query::ObsSubjectCodeDate {
                    k: f.k,
                    code,
                    year: at.date.year(),
                })
            })
            .collect(),
        Kind::Has => rare_codes.iter().map(|code| Query::Has { code }).collect(),
        Kind::HasCommonFamily => sampled()
            .filter_map(|f| {
                Some(Query::HasCommonFamily {
                    code: common,
                    family: f.families.first()?,
                })
            })
            .collect(),
        Kind::SortLarge => vec![Query::SortLarge { code: common }],
        Kind::TotalAccurate => vec![Query::TotalAccurate { code: common }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::population::Person;

    fn population(n: u64) -> Vec<Facts> {
        (0..n).map(|k| Person::generate(42, k).facts()).collect()
    }

    #[test]
    fn values_are_encoded() {
        assert_eq!(encode("urn:oid:1.2|MRN-1"), "urn%3Aoid%3A1.2%7CMRN-1");
        assert_eq!(encode("O'Brien"), "O%27Brien");
    }

    #[test]
    fn every_selective_query_finds_what_it_was_made_from() {
        let pop = population(500);
        for kind in [
            Kind::Identifier,
            Kind::FamilyBirthdate,
            Kind::ObsSubjectCodeDate,
        ] {
            let qs = queries(kind, &pop, &[]);
            assert_eq!(qs.len(), 500, "{kind:?}");
            for q in &qs {
                assert!(q.expected(&pop) >= 1, "{q:?}");
            }
        }
        let q = Query::Identifier { k: 3 };
        assert_eq!(q.expected(&pop), 1);
        assert_eq!(
            q.path(),
            "/fhir/Patient?identifier=urn%3Aoid%3A2.16.840.1.113883.19.5%7CMRN-0000004"
        );
    }

    #[test]
    fn the_common_code_is_heart_rate_and_broad() {
        let pop = population(2000);
        let (code, count) = most_common_code(&pop);
        assert_eq!(code, "8867-4");
        let all: u64 = pop.iter().map(|f| f.observations.len() as u64).sum();
        assert!(count * 100 / all >= 15, "{count} of {all}");
        assert_eq!(
            Query::TotalAccurate { code }.path(),
            "/fhir/Observation?code=http%3A%2F%2Floinc.org%7C8867-4&_total=accurate&_count=1"
        );
    }
}
