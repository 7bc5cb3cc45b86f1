//! Chain verification as a streaming state machine, independent of where the chain is stored.
//!
//! The caller reads links in sequence order and feeds them one at a time; the verifier keeps
//! only the previous hash, the next expected sequence number, the checkpoints still ahead and a
//! few counters, so memory does not grow with the chain. Per link it computes one SHA-256 over
//! the stored record bytes and decodes the record once.

use std::fmt;

use haven_crypto::VerifyingKey;

use crate::chain::{Checkpoint, GENESIS, chain_hash};
use crate::record::AuditRecord;

/// The first place the chain is broken, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// The sequence number where the break was found (see [`BreakReason`] for each case).
    pub seq: u64,
    pub reason: BreakReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakReason {
    /// Link `seq` arrived where `expected` was due: links `expected..seq` were deleted (or, if
    /// `seq < expected`, sequence numbers repeat).
    Gap { expected: u64 },
    /// The link row for `seq` exists but its record row does not.
    MissingRecord,
    /// The record bytes at `seq` do not hash to the stored hash (altered or reordered).
    HashMismatch,
    /// The record at `seq` hashes correctly but is not a valid audit record.
    UndecodableRecord,
    /// A correctly signed checkpoint for `seq` names a different hash than the chain has.
    CheckpointMismatch,
    /// The checkpoint for `seq` names a trusted key but its signature does not verify.
    BadCheckpointSignature,
    /// The checkpoint for `seq` is signed by a key id that is not among the trusted keys.
    UnknownCheckpointKey { key_id: String },
    /// A checkpoint seals record `seq` but the chain ends at `last_seq` (0: empty chain).
    CheckpointBeyondEnd { last_seq: u64 },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.reason {
            BreakReason::Gap { expected } if *expected < seq => {
                if expected + 1 == seq {
                    write!(
                        f,
                        "audit record {expected} is missing (the chain continues at {seq}): a row was deleted"
                    )
                } else {
                    write!(
                        f,
                        "audit records {expected} to {} are missing (the chain continues at {seq}): rows were deleted",
                        seq - 1
                    )
                }
            }
            BreakReason::Gap { expected } => write!(
                f,
                "audit record {seq} came where record {expected} was due: sequence numbers repeat or go backwards"
            ),
            BreakReason::MissingRecord => write!(
                f,
                "audit record {seq} is gone but its chain link remains: the record row was deleted"
            ),
            BreakReason::HashMismatch => write!(
                f,
                "audit record {seq} does not match its hash: it was altered, or rows were reordered"
            ),
            BreakReason::UndecodableRecord => write!(
                f,
                "audit record {seq} matches its hash but is not a valid audit record: it was written malformed"
            ),
            BreakReason::CheckpointMismatch => write!(
                f,
                "the signed checkpoint at audit record {seq} does not match the chain: records up to {seq} were altered and re-hashed"
            ),
            BreakReason::BadCheckpointSignature => write!(
                f,
                "the checkpoint at audit record {seq} has an invalid signature: it was forged or altered"
            ),
            BreakReason::UnknownCheckpointKey { key_id } => write!(
                f,
                "the checkpoint at audit record {seq} is signed by key {key_id}, which is not trusted: it was forged, or a retired key is missing from the trusted keys"
            ),
            BreakReason::CheckpointBeyondEnd { last_seq: 0 } => write!(
                f,
                "a checkpoint seals audit record {seq} but the chain is empty: records were deleted"
            ),
            BreakReason::CheckpointBeyondEnd { last_seq } => write!(
                f,
                "audit records {} to {seq} are missing: a checkpoint seals record {seq} but the chain ends at {last_seq}, so records were deleted from the end",
                last_seq + 1
            ),
        }
    }
}

impl std::error::Error for Break {}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub links: u64,
    pub checkpoints_checked: u64,
    pub last_seq: Option<u64>,
    /// The chain hash after the last link ([`GENESIS`] for an empty chain).
    pub head: [u8; 32],
    /// The highest sequence number a checked checkpoint sealed. Records after it are protected
    /// against alteration by the chain but not against deletion from the end.
    pub sealed_through: Option<u64>,
}

#[derive(Debug)]
pub struct ChainVerifier {
    keys: Vec<(String, VerifyingKey)>,
    prev: [u8; 32],
    next_seq: u64,
    /// Checkpoints still ahead, sorted by descending seq so the next one is at the end.
    pending: Vec<Checkpoint>,
    links: u64,
    checkpoints_checked: u64,
    sealed_through: Option<u64>,
    broken: Option<Break>,
}

impl ChainVerifier {
    /// `keys` are trusted to sign checkpoints; keep retired keys here after a rotation.
    #[must_use]
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.key_id(), k)).collect(),
            prev: GENESIS,
            next_seq: 1,
            pending: Vec::new(),
            links: 0,
            checkpoints_checked: 0,
            sealed_through: None,
            broken: None,
        }
    }

    /// Checkpoints to check against the chain, in any order, from any source (the database, log
    /// copies); duplicates are fine. Give them before the first link: a checkpoint whose seq was
    /// already passed (or is 0) cannot be checked and is reported as a `CheckpointMismatch`.
    pub fn expect_checkpoints(&mut self, cps: Vec<Checkpoint>) {
        self.pending.extend(cps);
        self.pending.sort_by_key(|cp| std::cmp::Reverse(cp.seq));
    }

    /// The next link in sequence order: its seq, the stored record bytes (`None` if the record
    /// row is missing) and the stored chain hash. Links start at 1 and have no gaps. After a
    /// break, every further call returns the same break.
    pub fn link(
        &mut self,
        seq: u64,
        canonical: Option<&[u8]>,
        stored_hash: &[u8; 32],
    ) -> Result<(), Break> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        let result = self.step(seq, canonical, stored_hash);
        if let Err(b) = &result {
            self.broken = Some(b.clone());
        }
        result
    }

    fn step(
        &mut self,
        seq: u64,
        canonical: Option<&[u8]>,
        stored_hash: &[u8; 32],
    ) -> Result<(), Break> {
        let brk = |reason| Err(Break { seq, reason });
        if let Some(cp) = self.pending.last()
            && cp.seq < self.next_seq
        {
            return Err(Break {
                seq: cp.seq,
                reason: BreakReason::CheckpointMismatch,
            });
        }
        if seq != self.next_seq {
            return brk(BreakReason::Gap {
                expected: self.next_seq,
            });
        }
        let Some(bytes) = canonical else {
            return brk(BreakReason::MissingRecord);
        };
        let hash = chain_hash(&self.prev, seq, bytes);
        if hash != *stored_hash {
            return brk(BreakReason::HashMismatch);
        }
        if AuditRecord::from_canonical(bytes).is_err() {
            return brk(BreakReason::UndecodableRecord);
        }
        while self.pending.last().is_some_and(|cp| cp.seq == seq) {
            let cp = self.pending.pop().expect("checked by the loop condition");
            self.check_checkpoint(&cp, &hash)?;
            self.checkpoints_checked += 1;
            self.sealed_through = Some(seq);
        }
        self.prev = hash;
        self.next_seq += 1;
        self.links += 1;
        Ok(())
    }

    fn check_checkpoint(&self, cp: &Checkpoint, hash: &[u8; 32]) -> Result<(), Break> {
        let brk = |reason| {
            Err(Break {
                seq: cp.seq,
                reason,
            })
        };
        let mut named = self
            .keys
            .iter()
            .filter(|(id, _)| *id == cp.key_id)
            .peekable();
        if named.peek().is_none() {
            return brk(BreakReason::UnknownCheckpointKey {
                key_id: cp.key_id.chars().take(64).collect(),
            });
        }
        if !named.any(|(_, key)| cp.signature_valid(key)) {
            return brk(BreakReason::BadCheckpointSignature);
        }
        if cp.hash != *hash {
            return brk(BreakReason::CheckpointMismatch);
        }
        Ok(())
    }

    /// Ends verification. Fails on the first earlier break, and if a checkpoint seals a record
    /// beyond the last link (records deleted from the end of the chain).
    pub fn finish(self) -> Result<Report, Break> {
        if let Some(b) = self.broken {
            return Err(b);
        }
        let last_seq = self.next_seq - 1;
        if let Some(lowest) = self.pending.last() {
            if lowest.seq < self.next_seq {
                return Err(Break {
                    seq: lowest.seq,
                    reason: BreakReason::CheckpointMismatch,
                });
            }
            // Name the highest sealed record: it bounds what was deleted.
            let highest = self.pending.first().map_or(lowest.seq, |cp| cp.seq);
            return Err(Break {
                seq: highest,
                reason: BreakReason::CheckpointBeyondEnd { last_seq },
            });
        }
        Ok(Report {
            links: self.links,
            checkpoints_checked: self.checkpoints_checked,
            last_seq: (last_seq > 0).then_some(last_seq),
            head: self.prev,
            sealed_through: self.sealed_through,
        })
    }
}
