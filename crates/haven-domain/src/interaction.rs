//! The FHIR interactions Haven serves (R4 http.html), as one closed enum.
//!
//! The enum is the vocabulary for metrics labels, logs and (later) access decisions, so it must
//! stay small and bounded: a label value never comes from client input.

use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interaction {
    Capabilities,
    Create,
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Batch,
    Transaction,
    Validate,
    SearchType,
    SearchSystem,
    /// `Patient/[id]/$everything`.
    Everything,
    /// `Patient/[id]/$disclosures`: the accounting of disclosures (HIPAA 164.528).
    Disclosures,
}

impl Interaction {
    /// Every interaction, in the order the CapabilityStatement lists them.
    pub const ALL: [Interaction; 17] = [
        Interaction::Capabilities,
        Interaction::Create,
        Interaction::Read,
        Interaction::Vread,
        Interaction::Update,
        Interaction::Patch,
        Interaction::Delete,
        Interaction::HistoryInstance,
        Interaction::HistoryType,
        Interaction::HistorySystem,
        Interaction::Batch,
        Interaction::Transaction,
        Interaction::Validate,
        Interaction::SearchType,
        Interaction::SearchSystem,
        Interaction::Everything,
        Interaction::Disclosures,
    ];

    /// The R4 interaction code (CapabilityStatement `interaction.code`) or operation name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Batch => "batch",
            Interaction::Transaction => "transaction",
            Interaction::Validate => "validate",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::Everything => "everything",
            Interaction::Disclosures => "disclosures",
        }
    }

    /// True when the interaction changes stored data.
    #[must_use]
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Interaction::Create
                | Interaction::Update
                | Interaction::Patch
                | Interaction::Delete
                | Interaction::Batch
                | Interaction::Transaction
        )
    }
}
