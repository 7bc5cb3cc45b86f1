//! Break-glass: emergency access to one patient's records (HIPAA 164.312(a)(2)(ii)).
//!
//! A person with a role allowed to (`authorization.break_glass_roles`, default clinician) opens
//! it for one patient, giving a reason and a current one-time code from their authenticator
//! (a fresh second factor, whatever their session's age). It lasts a fixed time
//! (`authorization.break_glass_seconds`, default 60 min) and is a record like a session
//! (`break-glass`, keyed by user and patient), so every replica sees it. While it lasts, the
//! person's requests for that patient's records pass a Consent that would refuse them, and every
//! such access is recorded with purpose of use `ETREAT` (emergency treatment) and flagged in
//! its detail. Opening one is recorded with the reason, counted in
//! `haven_break_glass_total`, and alerted on (HavenBreakGlassUsed).
//!
//! Wrong codes count towards the account's lockout like failed logins.

use haven_audit::{AuditRecord, Category, Outcome};
use haven_crypto::{TotpSecret, verify_totp};
use haven_domain::{EmergencyAccess, Principal, PrincipalKind, ResourceId, Timestamp};
use haven_store::{AuditEntry, Expect, run_write};
use serde::{Deserialize, Serialize};

use crate::core::{Identity, expiry_in, now};
use crate::error::IdentityError;
use crate::events::{EventContext, user_actor};
use crate::records::{Account, kind, tx_put};

/// A reason is at least this long (a word or two is not a reason) and at most this long.
pub const MIN_REASON_CHARS: usize = 10;
pub const MAX_REASON_CHARS: usize = 500;
/// The part of the reason kept in the audit record's detail.
const REASON_IN_AUDIT: usize = 200;

/// An open emergency access, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grant {
    pub user_id: String,
    pub username: String,
    pub patient: String,
    pub reason: String,
    /// Microseconds since the Unix epoch.
    pub opened: i64,
    pub until: i64,
}

fn key(user_id: &str, patient: &str) -> String {
    format!("{user_id}/{patient}")
}

impl Identity {
    /// Opens emergency access to `patient` for the person `principal` is, after checking their
    /// role, their reason and a fresh one-time code. Returns when it ends.
    ///
    /// # Errors
    /// `NotAllowed` for a caller who may not break the glass, `Invalid` for a missing reason or
    /// patient, `InvalidMfaCode` for a wrong or reused code, `Throttled` after too many.
    pub async fn open_break_glass(
        &self,
        principal: &Principal,
        patient: &str,
        reason: &str,
        code: &str,
        ctx: &EventContext,
    ) -> Result<Timestamp, IdentityError> {
        if principal.kind != PrincipalKind::User || principal.issuer != self.settings.issuer {
            return Err(IdentityError::NotAllowed(
                "break-glass is for people signed in to Haven, with their own second factor".into(),
            ));
        }
        if !principal
            .roles
            .iter()
            .any(|r| self.settings.break_glass_roles.contains(r))
        {
            return Err(IdentityError::NotAllowed(format!(
                "the role {} may not open emergency access",
                principal.role_names()
            )));
        }
        ResourceId::parse(patient)
            .map_err(|_| IdentityError::Invalid("the patient id is not valid".into()))?;
        let reason = reason.trim();
        let chars = reason.chars().count();
        if !(MIN_REASON_CHARS..=MAX_REASON_CHARS).contains(&chars) {
            return Err(IdentityError::Invalid(format!(
                "give the reason for emergency access ({MIN_REASON_CHARS} to {MAX_REASON_CHARS} \
                 characters); it is recorded and reviewed"
            )));
        }
        let Some(account) = self
            .get::<Account>(kind::ACCOUNT, &principal.subject)
            .await?
        else {
            return Err(IdentityError::NotAllowed("no such account".into()));
        };
        if account.value.disabled {
            return Err(IdentityError::Disabled);
        }
        let name = account.value.username.clone();
        self.check_throttles(&name, ctx.source_ip.as_deref())
            .await?;
        let code = code.trim().replace(' ', "");
        let t = u64::try_from(now()).unwrap_or(0);
        let mut updated = account.value.clone();
        let step = match &account.value.totp {
            Some(totp) if totp.confirmed => {
                let secret = TotpSecret::from_base32(&totp.secret)
                    .map_err(|e| IdentityError::Internal(e.to_string()))?;
                if code.len() == 6 {
                    verify_totp(&secret, &code, t, totp.last_step)
                } else {
                    None
                }
            }
            _ => {
                return Err(IdentityError::NotAllowed(
                    "break-glass needs a second factor: set up an authenticator app first".into(),
                ));
            }
        };
        let Some(step) = step else {
            self.fail_attempt(&name, "break-glass-mfa-failed", ctx)
                .await?;
            return Err(IdentityError::InvalidMfaCode);
        };
        if let Some(tp) = updated.totp.as_mut() {
            tp.last_step = Some(step);
        }

        let opened = Timestamp::now();
        let until = expiry_in(self.settings.break_glass_duration);
        let grant = Grant {
            user_id: updated.id.clone(),
            username: updated.username.clone(),
            patient: patient.to_owned(),
            reason: reason.to_owned(),
            opened: opened.micros(),
            until: until.micros(),
        };
        let actor = user_actor(
            &updated.username,
            &updated.roles,
            Some(principal.client_id.as_str()),
        );
        let mut record = AuditRecord {
            time: opened,
            category: Category::Security,
            action: "break-glass-open".into(),
            status: 200,
            outcome: Outcome::Success,
            actor,
            source_ip: ctx.source_ip.clone(),
            request_id: ctx.request_id.clone(),
            purpose_of_use: Some("ETREAT".into()),
            entities: Vec::new(),
            patients: vec![patient.to_owned()],
            detail: Some(format!(
                "until={} reason={}",
                until.to_instant_string(),
                reason.chars().take(REASON_IN_AUDIT).collect::<String>()
            )),
        };
        record.normalize();
        let entry = AuditEntry {
            time: opened,
            patients: record.patients.clone(),
            record: record.canonical(),
        };
        let version = account.version;
        let k = key(&grant.user_id, patient);
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                // The account version makes the code single-use, as at login.
                tx_put(
                    tx,
                    kind::ACCOUNT,
                    &updated.id.clone(),
                    &updated,
                    None,
                    Expect::Version(version),
                )
                .await?;
                tx_put(tx, kind::BREAK_GLASS, &k, &grant, Some(until), Expect::Any).await?;
                tx.audit(entry).await?;
                Ok(())
            })
        })
        .await?;
        metrics::counter!("haven_break_glass_total").increment(1);
        self.caches.forget_grants(&principal.subject);
        tracing::warn!(
            user = %name,
            until = %until.to_instant_string(),
            "break-glass: emergency access opened"
        );
        Ok(until)
    }

    /// The emergency accesses a person has open now (cached like revocations).
    pub(crate) async fn emergency_grants(
        &self,
        user_id: &str,
    ) -> Result<Vec<EmergencyAccess>, IdentityError> {
        if let Some(g) = self.caches.grants(user_id) {
            return Ok(g);
        }
        let prefix = format!("{user_id}/");
        let mut out = Vec::new();
        let mut after = prefix.clone();
        // A person holds a handful at most; the loop is bounded all the same.
        for _ in 0..10 {
            let page = self
                .store
                .record_list(kind::BREAK_GLASS, Some(&after), 100)
                .await?;
            let done = page.len() < 100;
            for (k, rec) in &page {
                if !k.starts_with(&prefix) {
                    continue;
                }
                if let Ok(g) = serde_json::from_slice::<Grant>(&rec.body)
                    && g.until > Timestamp::now().micros()
                {
                    out.push(EmergencyAccess {
                        patient: g.patient,
                        until: Timestamp::from_micros(g.until),
                    });
                }
            }
            match page.last() {
                Some((k, _)) if !done && k.starts_with(&prefix) => after.clone_from(k),
                _ => break,
            }
        }
        self.caches.remember_grants(user_id, out.clone());
        Ok(out)
    }
}
