//! Contract tests of the search index: what `search`, `related`, `scan` and the unit-of-work
//! searches return for hand-built index rows.
//!
//! The store knows no FHIR, so neither do these tests: parameters are arbitrary [`ParamKey`]s
//! and every row is written out by hand. Expected results are spelled out (or, for the paging
//! matrices, computed by a plain in-memory sort), never read back from the store under test.
//! Text compares bytewise in both stores, so several values are chosen where a locale-aware
//! collation or a case-folding `LIKE` would give a different answer.

mod matching;
mod paging;
mod references;
mod units;

pub use matching::*;
pub use paging::*;
pub use references::*;
pub use units::*;

use bytes::Bytes;
use haven_domain::{Timestamp, VersionId};
use haven_store::{
    ChangeKind, Col, Condition, Found, IndexCell, IndexRow, NewVersion, ParamKey, Pred,
    ResourceStore, Scalar, SearchPage, SearchQuery, Table, WriteTx, run_write,
};

use crate::{TestError, rid, ty};

/// A string parameter.
const NAME: ParamKey = ParamKey(1001);
/// A token parameter.
const CODE: ParamKey = ParamKey(1002);
/// A reference parameter (e.g. `subject`).
const SUBJECT: ParamKey = ParamKey(1003);
/// A date parameter.
const BORN: ParamKey = ParamKey(1004);
/// A number parameter.
const VALUE: ParamKey = ParamKey(1005);
/// A uri parameter.
const URL: ParamKey = ParamKey(1006);
/// A second string parameter.
const NOTE: ParamKey = ParamKey(1007);
/// A second reference parameter (e.g. `performer`).
const PERFORMER: ParamKey = ParamKey(1008);
/// A third reference parameter (e.g. `managingOrganization`).
const ORG: ParamKey = ParamKey(1009);
/// The components of a composite parameter: a code and a value.
const PART_CODE: ParamKey = ParamKey(1010);
const PART_VALUE: ParamKey = ParamKey(1011);

fn string(param: ParamKey, value: &str) -> IndexRow {
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::String {
            normalized: value.to_owned(),
            exact: value.to_owned(),
        },
    }
}

fn token(param: ParamKey, system: Option<&str>, code: Option<&str>) -> IndexRow {
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::Token {
            system: system.map(str::to_owned),
            code: code.map(str::to_owned),
            text: None,
            type_system: None,
            type_code: None,
        },
    }
}

/// A reference row to `"Type/id"`.
fn reference(param: ParamKey, target: &str) -> IndexRow {
    let (t, id) = target.split_once('/').expect("Type/id");
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::Reference {
            target_type: Some(t.to_owned()),
            target_id: Some(id.to_owned()),
            version: None,
            url: Some(target.to_owned()),
            ident_system: None,
            ident_value: None,
        },
    }
}

fn date(param: ParamKey, start: i64, end: i64) -> IndexRow {
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::Date { start, end },
    }
}

fn number(param: ParamKey, value: f64) -> IndexRow {
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::Number {
            lower: value,
            upper: value,
            system: None,
            code: None,
            unit: None,
        },
    }
}

fn uri(param: ParamKey, value: &str) -> IndexRow {
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::Uri {
            value: value.to_owned(),
        },
    }
}

fn in_group(mut row: IndexRow, grp: i32) -> IndexRow {
    row.grp = grp;
    row
}

fn text(s: &str) -> Scalar {
    Scalar::Text(s.to_owned())
}

fn eq(col: Col, s: &str) -> Pred {
    Pred::Eq(col, text(s))
}

fn any(table: Table, param: ParamKey, pred: Pred) -> Condition {
    Condition::Any {
        table,
        params: vec![param],
        pred,
    }
}

fn none(table: Table, param: ParamKey, pred: Pred) -> Condition {
    Condition::None {
        table,
        params: vec![param],
        pred,
    }
}

/// The version a unit of work appends next for `t/id`: its number and change kind.
async fn next_version(
    tx: &mut dyn WriteTx,
    t: &str,
    id: &str,
) -> Result<(VersionId, ChangeKind), TestError> {
    Ok(match tx.current(ty(t), &rid(id)).await? {
        Some(cur) => (cur.version.next(), ChangeKind::Update),
        None => (VersionId::FIRST, ChangeKind::Create),
    })
}

fn version_of(
    t: &str,
    id: &str,
    (version, change): (VersionId, ChangeKind),
    body: Option<Bytes>,
    index: Vec<IndexRow>,
) -> NewVersion {
    let body = if change == ChangeKind::Delete {
        None
    } else {
        Some(body.unwrap_or_else(|| {
            Bytes::from(format!(
                "{{\"resourceType\":\"{t}\",\"id\":\"{id}\",\"v\":{}}}",
                version.get()
            ))
        }))
    };
    NewVersion {
        resource_type: ty(t),
        id: rid(id),
        version,
        last_updated: Timestamp::from_micros(i64::try_from(version.get()).unwrap()),
        change,
        body,
        index,
    }
}

/// Writes the next version of `t/id` (creating it if new) with these index rows.
async fn put(store: &dyn ResourceStore, t: &str, id: &str, rows: Vec<IndexRow>) {
    put_body(store, t, id, None, rows).await;
}

async fn put_body(
    store: &dyn ResourceStore,
    t: &str,
    id: &str,
    body: Option<Bytes>,
    rows: Vec<IndexRow>,
) {
    let (t, id) = (t.to_owned(), id.to_owned());
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let next = next_version(tx, &t, &id).await?;
            tx.append(version_of(&t, &id, next, body, rows)).await?;
            Ok::<_, TestError>(())
        })
    })
    .await
    .unwrap();
}

/// Deletes `t/id`. The deletion carries index rows, which the store must ignore.
async fn delete(store: &dyn ResourceStore, t: &str, id: &str, ignored_rows: Vec<IndexRow>) {
    let (t, id) = (t.to_owned(), id.to_owned());
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let (version, _) = next_version(tx, &t, &id).await?;
            tx.append(version_of(
                &t,
                &id,
                (version, ChangeKind::Delete),
                None,
                ignored_rows,
            ))
            .await?;
            Ok::<_, TestError>(())
        })
    })
    .await
    .unwrap();
}

/// A first page of up to 100 current resources of `types` matching every condition.
fn query(types: &[&str], conditions: Vec<Condition>) -> SearchQuery {
    SearchQuery {
        types: types.iter().map(|t| ty(t)).collect(),
        conditions,
        sort: Vec::new(),
        cursor: None,
        limit: 100,
        total: false,
        max_bytes: 1 << 20,
    }
}

fn label(found: &Found) -> String {
    format!("{}/{}", found.version.resource_type, found.version.id)
}

fn ids(page: &SearchPage) -> Vec<String> {
    page.matches
        .iter()
        .map(|f| f.version.id.to_string())
        .collect()
}

/// The ids of the first page of `q`, which must hold every match.
async fn found_ids(store: &dyn ResourceStore, q: &SearchQuery) -> Vec<String> {
    let page = store.search(q).await.unwrap();
    assert!(!page.has_next, "the test expects every match on one page");
    assert!(!page.has_previous, "a first page has nothing before it");
    let found = ids(&page);
    for variant in modes(q) {
        let other = ids(&store.search(&variant).await.unwrap());
        assert_eq!(
            other, found,
            "the same conditions written another way (driver/probe) disagree: {:?}",
            variant.conditions
        );
    }
    found
}

/// The query with its conditions written the other ways the store can write them: a store
/// lets one selective condition drive and the others probe, so forcing every condition to
/// probe (behind a selective `True`) or to drive (marked selective) must not change a result.
fn modes(q: &SearchQuery) -> Vec<SearchQuery> {
    let mut probing = q.clone();
    probing
        .conditions
        .insert(0, Condition::Selective(Box::new(Condition::True)));
    let mut driving = q.clone();
    driving.conditions = q
        .conditions
        .iter()
        .map(|c| Condition::Selective(Box::new(c.clone())))
        .collect();
    vec![probing, driving]
}

/// The ids of Patients matching one condition.
async fn patients(store: &dyn ResourceStore, c: Condition) -> Vec<String> {
    found_ids(store, &query(&["Patient"], vec![c])).await
}
