//! The single-resource interactions (R4 http.html: read, vread, create, update, patch, delete),
//! each written once as a step inside a unit of work, so the REST endpoint and every entry of a
//! transaction Bundle run exactly the same code.

use bytes::Bytes;
use haven_domain::{ResourceType, Timestamp, VersionId};
use haven_store::{ChangeKind, IndexRow, NewVersion, StoredVersion, WriteTx, run_write};
use serde_json::Value;

use crate::audit::{self, Touched, Who};
use crate::patch::apply_patch;
use crate::prepare::{Op, check_resource, finalize_indexed};
use crate::{FhirResponse, FhirService, RequestContext, ReturnPreference, ServiceError, outcome};

/// What a step did, before it is shaped into an HTTP response or a Bundle entry.
#[derive(Debug)]
pub(crate) struct Done {
    pub status: u16,
    pub version: Option<StoredVersion>,
    /// Whether `Location` should point at the version (create, and update-as-create).
    pub located: bool,
    /// Whether the step changed data (so `Prefer: return=` applies).
    pub write: bool,
    /// Further versions the step wrote (a conditional delete of several resources), for the
    /// audit record.
    pub also: Vec<StoredVersion>,
}

impl Done {
    /// The answer-shaping part of a step's result (without `also`, which only audit reads).
    pub(crate) fn clone_shallow(&self) -> Self {
        Self {
            status: self.status,
            version: self.version.clone(),
            located: self.located,
            write: self.write,
            also: Vec::new(),
        }
    }
}

fn gone(v: &StoredVersion) -> ServiceError {
    ServiceError::Gone {
        message: format!(
            "{}/{} was deleted (version {}); its history is still readable",
            v.resource_type, v.id, v.version
        ),
        version: Some(v.version),
        last_updated: Some(v.last_updated),
    }
}

fn not_found(ty: ResourceType, id: &haven_domain::ResourceId) -> ServiceError {
    ServiceError::NotFound(format!("{ty}/{id} does not exist"))
}

fn stale(current: VersionId, expected: VersionId) -> ServiceError {
    ServiceError::PreconditionFailed(format!(
        "If-Match expected version {expected} but the current version is {current}; read the resource again and re-apply your change"
    ))
}

/// The `If-Match` rule of update (http.html#concurrency): the named version must be current.
fn check_if_match(
    ty: ResourceType,
    id: &haven_domain::ResourceId,
    current: Option<&haven_store::CurrentState>,
    if_match: Option<VersionId>,
) -> Result<(), ServiceError> {
    match (current, if_match) {
        (Some(c), Some(expected)) if c.version != expected => Err(stale(c.version, expected)),
        (None, Some(expected)) => Err(ServiceError::PreconditionFailed(format!(
            "If-Match expected version {expected} but {ty}/{id} does not exist"
        ))),
        _ => Ok(()),
    }
}

/// Runs one operation inside a unit of work. Reads see the unit's earlier writes.
pub(crate) async fn apply(tx: &mut dyn WriteTx, op: Op) -> Result<Done, ServiceError> {
    let now = Timestamp::now();
    match op {
        Op::Create {
            ty,
            id,
            body,
            if_none_exist: Some(criteria),
        } => {
            tx.lock_criteria(criteria.lock_key).await?;
            let found = tx.search_ids(&criteria.query).await?;
            match found.as_slice() {
                [] => {
                    let op = Op::Create {
                        ty,
                        id,
                        body,
                        if_none_exist: None,
                    };
                    Box::pin(apply(tx, op)).await
                }
                // One match: nothing is created; the existing resource is the answer
                // (http.html#ccreate: 200 OK).
                [(t, existing)] => {
                    let v = tx
                        .read_current(*t, existing)
                        .await?
                        .ok_or(ServiceError::Internal)?;
                    Ok(Done {
                        status: 200,
                        version: Some(v),
                        located: true,
                        write: false,
                        also: Vec::new(),
                    })
                }
                _ => Err(ServiceError::PreconditionFailed(
                    "If-None-Exist matches more than one resource; make the criteria more \
                     selective (e.g. an identifier)"
                        .into(),
                )),
            }
        }
        Op::ConditionalUpdate { ty, body, criteria } => {
            tx.lock_criteria(criteria.lock_key).await?;
            let found = tx.search_ids(&criteria.query).await?;
            let given = body
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| haven_domain::ResourceId::parse(s).ok());
            let id = match found.as_slice() {
                // No match: create, with the id the body names or a new one.
                [] => given.unwrap_or_else(haven_domain::ResourceId::generate),
                [(_, id)] => {
                    if given.as_ref().is_some_and(|g| g != id) {
                        return Err(ServiceError::BadRequest(format!(
                            "the criteria match {ty}/{id}, but the resource's id is different; \
                             drop the id or fix the criteria"
                        )));
                    }
                    id.clone()
                }
                _ => {
                    return Err(ServiceError::PreconditionFailed(
                        "the conditional update matches more than one resource; make the \
                         criteria more selective"
                            .into(),
                    ));
                }
            };
            let op = Op::Update {
                ty,
                id,
                body,
                if_match: None,
            };
            Box::pin(apply(tx, op)).await
        }
        Op::ConditionalDelete { ty, criteria } => {
            tx.lock_criteria(criteria.lock_key).await?;
            let found = tx.search_ids(&criteria.query).await?;
            if found.len() > crate::prepare::MAX_CONDITIONAL_DELETES as usize {
                return Err(ServiceError::PreconditionFailed(format!(
                    "the conditional delete matches more than {} {ty} resources; make the \
                     criteria more selective",
                    crate::prepare::MAX_CONDITIONAL_DELETES
                )));
            }
            let mut last = None;
            let mut also = Vec::new();
            for (t, id) in found {
                let done = Box::pin(apply(
                    tx,
                    Op::Delete {
                        ty: t,
                        id,
                        if_match: None,
                    },
                ))
                .await?;
                if let Some(v) = done.version {
                    also.extend(last.replace(v));
                }
            }
            Ok(Done {
                status: 204,
                version: last,
                located: false,
                write: true,
                also,
            })
        }
        Op::Create {
            ty,
            id,
            body,
            if_none_exist: None,
        } => {
            let version = VersionId::FIRST;
            let bytes = finalize_indexed(ty, body, &id, version, now)?;
            let stored = append(tx, ty, id, version, now, ChangeKind::Create, Some(bytes)).await?;
            Ok(Done {
                status: 201,
                version: Some(stored),
                located: true,
                write: true,
                also: Vec::new(),
            })
        }
        Op::Insert {
            ty,
            id,
            last_updated,
            bytes,
            index,
        } => {
            let stored = append(
                tx,
                ty,
                id,
                VersionId::FIRST,
                last_updated,
                ChangeKind::Create,
                Some((bytes, index)),
            )
            .await?;
            Ok(Done {
                status: 201,
                version: Some(stored),
                located: true,
                write: true,
                also: Vec::new(),
            })
        }
        Op::Replace {
            ty,
            id,
            base,
            if_match,
            version,
            last_updated,
            bytes,
            index,
        } => {
            let current = tx.current(ty, &id).await?;
            check_if_match(ty, &id, current.as_ref(), if_match)?;
            if current != base {
                // Written meanwhile: the sealed bytes name the wrong version.
                return Err(ServiceError::WriteRace);
            }
            let created = current.is_none_or(|c| c.deleted);
            let stored = append(
                tx,
                ty,
                id,
                version,
                last_updated,
                ChangeKind::Update,
                Some((bytes, index)),
            )
            .await?;
            Ok(Done {
                status: if created { 201 } else { 200 },
                version: Some(stored),
                located: created,
                write: true,
                also: Vec::new(),
            })
        }
        Op::Update {
            ty,
            id,
            body,
            if_match,
        } => {
            let current = tx.current(ty, &id).await?;
            let (version, at, created) = match (current, if_match) {
                (Some(c), Some(expected)) if c.version != expected => {
                    return Err(stale(c.version, expected));
                }
                (None, Some(expected)) => {
                    return Err(ServiceError::PreconditionFailed(format!(
                        "If-Match expected version {expected} but {ty}/{id} does not exist"
                    )));
                }
                (Some(c), _) => (c.version.next(), now.max(c.last_updated.succ()), c.deleted),
                (None, None) => (VersionId::FIRST, now, true),
            };
            let bytes = finalize_indexed(ty, body, &id, version, at)?;
            let stored = append(tx, ty, id, version, at, ChangeKind::Update, Some(bytes)).await?;
            Ok(Done {
                status: if created { 201 } else { 200 },
                version: Some(stored),
                located: created,
                write: true,
                also: Vec::new(),
            })
        }
        Op::Patch {
            ty,
            id,
            patch,
            if_match,
            limits,
        } => {
            let current = tx
                .read_current(ty, &id)
                .await?
                .ok_or_else(|| not_found(ty, &id))?;
            if current.is_deleted() {
                return Err(gone(&current));
            }
            if let Some(expected) = if_match
                && current.version != expected
            {
                return Err(stale(current.version, expected));
            }
            let body = current.body.as_deref().ok_or(ServiceError::Internal)?;
            let mut doc: Value =
                serde_json::from_slice(body).map_err(|_| ServiceError::Internal)?;
            apply_patch(&mut doc, &patch, limits)?;
            let Value::Object(mut patched) = doc else {
                return Err(ServiceError::Unprocessable(
                    "the JSON Patch must leave a JSON object".into(),
                ));
            };
            if patched.get("resourceType").and_then(Value::as_str) != Some(ty.as_str())
                || patched.get("id").and_then(Value::as_str) != Some(id.as_str())
            {
                return Err(ServiceError::Unprocessable(
                    "a patch may not change a resource's resourceType or id".into(),
                ));
            }
            // meta.versionId/lastUpdated are the server's: drop any patched values.
            if let Some(Value::Object(meta)) = patched.get_mut("meta") {
                meta.remove("versionId");
                meta.remove("lastUpdated");
            }
            let checked = check_resource(ty, patched, Some(&id))?;
            let version = current.version.next();
            let at = now.max(current.last_updated.succ());
            let bytes = finalize_indexed(ty, checked, &id, version, at)?;
            let stored = append(tx, ty, id, version, at, ChangeKind::Patch, Some(bytes)).await?;
            Ok(Done {
                status: 200,
                version: Some(stored),
                located: false,
                write: true,
                also: Vec::new(),
            })
        }
        Op::Delete { ty, id, if_match } => {
            // Deleting what does not exist, or is already deleted, succeeds without a new
            // version (http.html#delete) -- unless If-Match names a version that is not current.
            let current = tx.current(ty, &id).await?;
            if let Some(expected) = if_match {
                match current {
                    Some(c) if c.version == expected => {}
                    Some(c) => return Err(stale(c.version, expected)),
                    None => {
                        return Err(ServiceError::PreconditionFailed(format!(
                            "If-Match expected version {expected} but {ty}/{id} does not exist"
                        )));
                    }
                }
            }
            match current {
                Some(c) if !c.deleted => {
                    let version = c.version.next();
                    let at = now.max(c.last_updated.succ());
                    let stored = append(tx, ty, id, version, at, ChangeKind::Delete, None).await?;
                    Ok(Done {
                        status: 204,
                        version: Some(stored),
                        located: false,
                        write: true,
                        also: Vec::new(),
                    })
                }
                _ => Ok(Done {
                    status: 204,
                    version: None,
                    located: false,
                    write: true,
                    also: Vec::new(),
                }),
            }
        }
        Op::Read { ty, id } => {
            let v = tx
                .read_current(ty, &id)
                .await?
                .ok_or_else(|| not_found(ty, &id))?;
            read_result(v)
        }
        Op::Vread { ty, id, version } => {
            let v = tx.read_version(ty, &id, version).await?.ok_or_else(|| {
                ServiceError::NotFound(format!("{ty}/{id} has no version {version}"))
            })?;
            read_result(v)
        }
    }
}

pub(crate) fn read_result(v: StoredVersion) -> Result<Done, ServiceError> {
    if v.is_deleted() {
        return Err(gone(&v));
    }
    Ok(Done {
        status: 200,
        version: Some(v),
        located: false,
        write: false,
        also: Vec::new(),
    })
}

async fn append(
    tx: &mut dyn WriteTx,
    ty: ResourceType,
    id: haven_domain::ResourceId,
    version: VersionId,
    last_updated: Timestamp,
    change: ChangeKind,
    body: Option<(Bytes, Vec<IndexRow>)>,
) -> Result<StoredVersion, ServiceError> {
    let (body, index) = match body {
        Some((bytes, index)) => (Some(bytes), index),
        None => (None, Vec::new()),
    };
    let nv = NewVersion {
        resource_type: ty,
        id: id.clone(),
        version,
        last_updated,
        change,
        body: body.clone(),
        index,
    };
    tx.append(nv).await?;
    Ok(StoredVersion {
        resource_type: ty,
        id,
        version,
        last_updated,
        change,
        body,
    })
}

/// Lost write races (two writers creating the same version at once, which only a replicated
/// database can produce) are retried: the next attempt sees the winner's version and then
/// succeeds, or fails with the precondition error the client should see.
pub(crate) async fn retry_on_race<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: IsRace,
{
    const ATTEMPTS: usize = 3;
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Err(e) if e.is_race() && n < ATTEMPTS => {
                tracing::debug!(
                    attempt = n,
                    "retrying a unit of work after a lost write race"
                );
            }
            other => return other,
        }
    }
}

pub(crate) trait IsRace {
    fn is_race(&self) -> bool;
}

impl IsRace for ServiceError {
    fn is_race(&self) -> bool {
        matches!(self, ServiceError::WriteRace)
    }
}

impl FhirService {
    /// Runs one operation on its own (its own unit of work for writes), with its audit record:
    /// inside the unit for a write, durable before the answer for a read or a failure.
    pub(crate) async fn execute_op(
        &self,
        ctx: &RequestContext,
        op: Op,
    ) -> Result<Done, ServiceError> {
        let action = op.action();
        let target = op.target().map(|(t, id)| (t, id.to_string()));
        let who = Who::of(ctx);
        let named = |t: &mut Touched| {
            if let Some((ty, id)) = &target {
                t.named(*ty, id);
            }
        };
        match op {
            Op::Read { ty, id } => {
                let r = self
                    .store
                    .read_current(ty, &id)
                    .await
                    .map_err(ServiceError::from)
                    .and_then(|v| {
                        v.ok_or_else(|| ServiceError::NotFound(format!("{ty}/{id} does not exist")))
                    });
                let r = self.consented(ctx, r).await;
                self.audit_read(&who, action, r, named).await
            }
            Op::Vread { ty, id, version } => {
                let r = self
                    .store
                    .read_version(ty, &id, version)
                    .await
                    .map_err(ServiceError::from)
                    .and_then(|v| {
                        v.ok_or_else(|| {
                            ServiceError::NotFound(format!("{ty}/{id} has no version {version}"))
                        })
                    });
                let r = self.consented(ctx, r).await;
                self.audit_read(&who, action, r, named).await
            }
            write => {
                let write = write.sealed()?;
                let audit_writes = self.config.audit_writes;
                let mut attempt = 0;
                let r: Result<Done, ServiceError> = retry_on_race(|| {
                    attempt += 1;
                    let op = write.clone();
                    let who = who.clone();
                    // The last attempt does its work inside the unit, so a resource updated
                    // without pause by others still gets this update in.
                    let seal = attempt < 3;
                    async move {
                        let op = if seal {
                            self.seal_update(op).await?
                        } else {
                            op
                        };
                        run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
                            Box::pin(async move {
                                let done = apply(tx, op).await?;
                                if audit_writes {
                                    let mut t = Touched::default();
                                    for v in done.version.iter().chain(&done.also) {
                                        audit::touch_written(tx, &mut t, v).await?;
                                    }
                                    tx.audit(audit::entry(&who, action, done.status, t, None))
                                        .await
                                        .map_err(audit::refused)?;
                                }
                                Ok(done)
                            })
                        })
                        .await
                    }
                })
                .await;
                if let Err(e) = &r
                    && audit_writes
                    && audit::worth_recording(e)
                {
                    // Nothing was written; the refusal is recorded on its own.
                    let mut t = Touched::default();
                    named(&mut t);
                    self.audit_alone(audit::entry(&who, action, e.status(), t, None))
                        .await?;
                }
                r
            }
        }
    }

    /// A read's answer (or refusal), recorded before it is returned.
    async fn audit_read(
        &self,
        who: &Who,
        action: &str,
        r: Result<StoredVersion, ServiceError>,
        named: impl FnOnce(&mut Touched),
    ) -> Result<Done, ServiceError> {
        let r = r.and_then(read_result);
        if !self.config.audit_writes {
            return r;
        }
        if let Err(e) = &r
            && !audit::worth_recording(e)
        {
            return r;
        }
        let mut t = Touched::default();
        let status = match &r {
            Ok(done) => {
                if let Some(v) = &done.version {
                    t.version(v);
                }
                done.status
            }
            Err(e) => {
                named(&mut t);
                e.status()
            }
        };
        self.audit_alone(audit::entry(who, action, status, t, None))
            .await?;
        r
    }

    /// Seals an update outside the unit of work: reads the head on the read path, and
    /// serializes and indexes the new version there, so the unit (on SQLite, the one writer)
    /// only checks the head and writes. Other operations pass through.
    async fn seal_update(&self, op: Op) -> Result<Op, ServiceError> {
        let Op::Update {
            ty,
            id,
            body,
            if_match,
        } = op
        else {
            return Ok(op);
        };
        let head = self.store.read_current(ty, &id).await?;
        let base = head.as_ref().map(|v| haven_store::CurrentState {
            version: v.version,
            last_updated: v.last_updated,
            deleted: v.is_deleted(),
        });
        // A stale If-Match fails here already, with the same answer the unit would give.
        check_if_match(ty, &id, base.as_ref(), if_match)?;
        let now = Timestamp::now();
        let (version, last_updated) = match &base {
            Some(c) => (c.version.next(), now.max(c.last_updated.succ())),
            None => (VersionId::FIRST, now),
        };
        let (bytes, index) = finalize_indexed(ty, body, &id, version, last_updated)?;
        Ok(Op::Replace {
            ty,
            id,
            base,
            if_match,
            version,
            last_updated,
            bytes,
            index,
        })
    }

    /// Runs one prepared operation: reads on the read path, writes as one unit of work.
    /// A version read for the caller, unless a Consent of its patients refuses them.
    async fn consented(
        &self,
        ctx: &RequestContext,
        r: Result<StoredVersion, ServiceError>,
    ) -> Result<StoredVersion, ServiceError> {
        let v = r?;
        if ctx.principal.is_none() || !self.any_consent().await? {
            return Ok(v);
        }
        let mut t = Touched::default();
        t.patients_of_version(&v);
        self.check_consent(ctx, &t.patients).await?;
        Ok(v)
    }

    pub(crate) async fn execute_single(
        &self,
        ctx: &RequestContext,
        op: Op,
    ) -> Result<FhirResponse, ServiceError> {
        let done = self.execute_op(ctx, op).await?;
        let mut resp = self.respond(ctx, done.clone_shallow());
        // A write's answer may carry a resource (the version written, or what a conditional
        // create found): not one a patient's Consent withholds from this caller.
        if resp.body.is_some()
            && let Some(v) = &done.version
            && !self.may_show(ctx, v).await?
        {
            resp.body = None;
            resp.resource_type = None;
        }
        Ok(resp)
    }

    /// Shapes a step's result as a REST response, honouring `Prefer: return=`.
    pub(crate) fn respond(&self, ctx: &RequestContext, done: Done) -> FhirResponse {
        let Some(v) = done.version else {
            return FhirResponse {
                status: done.status,
                body: None,
                location: None,
                version: None,
                last_modified: None,
                resource_type: None,
                audit: None,
            };
        };
        let location = done.located.then(|| {
            format!(
                "{}/{}/{}/_history/{}",
                self.config.base_url, v.resource_type, v.id, v.version
            )
        });
        let body = if done.status == 204 {
            None
        } else if !done.write {
            v.body.clone()
        } else {
            match ctx.prefer {
                ReturnPreference::Representation => v.body.clone(),
                ReturnPreference::Minimal => None,
                ReturnPreference::OperationOutcome => Some(Bytes::from(
                    serde_json::to_vec(&outcome::information(&format!(
                        "{}/{} is now at version {}",
                        v.resource_type, v.id, v.version
                    )))
                    .unwrap_or_default(),
                )),
            }
        };
        FhirResponse {
            status: done.status,
            resource_type: body.as_ref().map(|_| v.resource_type),
            body,
            location,
            version: Some(v.version),
            last_modified: Some(v.last_updated),
            audit: None,
        }
    }
}
