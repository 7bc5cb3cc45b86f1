//! Searches inside a unit of work: they see the unit's own writes, and under
//! `lock_criteria` two units deciding on the same criteria cannot both create.

use std::time::Duration;

use haven_domain::ResourceId;
use haven_store::{
    ChangeKind, Col, Condition, ResourceStore, SearchQuery, Table, WriteTx, run_write,
};

use super::{CODE, any, eq, next_version, patients, put, query, token, version_of};
use crate::{TestError, rid, ty};

fn identifier(value: &str) -> Condition {
    any(Table::Token, CODE, eq(Col::Code, value))
}

fn by_identifier(value: &str) -> SearchQuery {
    query(&["Patient"], vec![identifier(value)])
}

fn mrn(value: &str) -> Vec<haven_store::IndexRow> {
    vec![token(CODE, Some("urn:mrn"), Some(value))]
}

/// The ids `search_ids` finds (all of type Patient).
async fn ids_in_unit(tx: &mut dyn WriteTx, q: &SearchQuery) -> Result<Vec<String>, TestError> {
    let found = tx.search_ids(q).await?;
    assert!(found.iter().all(|(t, _)| *t == ty("Patient")));
    Ok(found.into_iter().map(|(_, id)| id.to_string()).collect())
}

pub async fn unit_searches_see_their_own_writes(store: &dyn ResourceStore) {
    put(store, "Patient", "x", mrn("m1")).await;
    put(store, "Patient", "y", mrn("m2")).await;
    for commit in [false, true] {
        let r = run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                assert!(ids_in_unit(tx, &by_identifier("m3")).await?.is_empty());
                let next = next_version(tx, "Patient", "z").await?;
                tx.append(version_of("Patient", "z", next, None, mrn("m3")))
                    .await?;
                assert_eq!(ids_in_unit(tx, &by_identifier("m3")).await?, ["z"]);

                let (version, _) = next_version(tx, "Patient", "x").await?;
                tx.append(version_of(
                    "Patient",
                    "x",
                    (version, ChangeKind::Delete),
                    None,
                    Vec::new(),
                ))
                .await?;
                assert!(ids_in_unit(tx, &by_identifier("m1")).await?.is_empty());

                assert!(
                    tx.replace_index(ty("Patient"), &rid("y"), mrn("m3"))
                        .await?
                );
                assert!(ids_in_unit(tx, &by_identifier("m2")).await?.is_empty());
                // In rid order, up to the limit.
                assert_eq!(ids_in_unit(tx, &by_identifier("m3")).await?, ["y", "z"]);
                let mut one = by_identifier("m3");
                one.limit = 1;
                assert_eq!(ids_in_unit(tx, &one).await?, ["y"]);
                if commit {
                    Ok(())
                } else {
                    Err(TestError::Refused)
                }
            })
        })
        .await;
        if commit {
            r.unwrap();
            assert_eq!(patients(store, identifier("m3")).await, ["y", "z"]);
            assert!(patients(store, identifier("m1")).await.is_empty());
            assert!(patients(store, identifier("m2")).await.is_empty());
        } else {
            assert!(matches!(r, Err(TestError::Refused)), "{r:?}");
            // A unit rolled back leaves the index as it was.
            assert!(patients(store, identifier("m3")).await.is_empty());
            assert_eq!(patients(store, identifier("m1")).await, ["x"]);
            assert_eq!(patients(store, identifier("m2")).await, ["y"]);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Decision {
    Created(String),
    Found(String),
}

pub async fn conditional_creates_under_one_lock_create_once(store: &dyn ResourceStore) {
    // Eight units try a conditional create (`If-None-Exist: identifier=m9`) at once.
    let units = (0..8).map(|i| {
        run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tx.lock_criteria(0x5EED_0009).await?;
                if let Some((_, id)) = tx.search_ids(&by_identifier("m9")).await?.first() {
                    return Ok(Decision::Found(id.to_string()));
                }
                // Widen the window between deciding and writing that the lock must close.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let id = format!("cc{i}");
                let next = next_version(tx, "Patient", &id).await?;
                tx.append(version_of("Patient", &id, next, None, mrn("m9")))
                    .await?;
                Ok::<_, TestError>(Decision::Created(id))
            })
        })
    });
    let results = futures::future::join_all(units).await;
    let decisions: Vec<Decision> = results
        .into_iter()
        .map(|r| r.expect("no unit fails"))
        .collect();
    let created: Vec<&String> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Created(id) => Some(id),
            Decision::Found(_) => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{decisions:?}");
    let winner = created[0].clone();
    for d in &decisions {
        if let Decision::Found(id) = d {
            assert_eq!(*id, winner, "{decisions:?}");
        }
    }
    assert_eq!(patients(store, identifier("m9")).await, [winner.as_str()]);
    let id = ResourceId::parse(&winner).unwrap();
    assert!(
        store
            .read_current(ty("Patient"), &id)
            .await
            .unwrap()
            .is_some()
    );
}
