//! The revocation registry's reads. They run outside the writer lock: the writer assigns
//! sequence numbers in commit order, so a reader never sees a later entry before an earlier one.

use std::collections::{BTreeSet, HashMap};

use mintgate_domain::Serial;
use mintgate_domain::lifecycle::CertState;
use mintgate_domain::model::{BlockRecord, CertificateRecord, RevocationRecord, StoredStatus};
use mintgate_domain::ports::CrlEntry;
use mintgate_domain::store::{LogBounds, StoreError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Select,
};
use time::OffsetDateTime;

use crate::entity::{certificate, identity_block, revocation, revocation_floor};
use crate::{SqlStore, convert, unavailable};

/// States of a certificate that still works (until its notAfter).
pub(crate) fn live_states() -> [&'static str; 2] {
    [CertState::Active.as_str(), CertState::Superseded.as_str()]
}

/// Every row `query` selects, converted.
async fn rows<E: EntityTrait, T>(
    query: Select<E>,
    db: &impl ConnectionTrait,
    convert: impl Fn(E::Model) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    query
        .all(db)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(convert)
        .collect()
}

impl SqlStore {
    pub(crate) async fn revocations_of_request_rows(
        &self,
        request_pk: i64,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let query = revocation::Entity::find()
            .filter(revocation::Column::RequestPk.eq(request_pk))
            .order_by_asc(revocation::Column::Seq);
        rows(query, &self.db, convert::revocation).await
    }

    pub(crate) async fn live_certificate_rows(
        &self,
        spiffe_id: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let query = certificate::Entity::find()
            .filter(certificate::Column::SpiffeId.eq(spiffe_id))
            .filter(certificate::Column::State.is_in(live_states()))
            .filter(certificate::Column::NotAfter.gt(now.unix_timestamp()))
            .order_by_asc(certificate::Column::IssuedAt);
        rows(query, &self.db, convert::certificate).await
    }

    pub(crate) async fn identity_block_row(
        &self,
        spiffe_id: &str,
    ) -> Result<Option<BlockRecord>, StoreError> {
        identity_block::Entity::find_by_id(spiffe_id.to_owned())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(convert::block)
            .transpose()
    }

    /// Two queries: the states of the stored ones among `serials`, then the log entries of
    /// the revoked ones and of their CAs.
    pub(crate) async fn certificate_status_rows(
        &self,
        serials: &[Serial],
    ) -> Result<Vec<StoredStatus>, StoreError> {
        if serials.is_empty() {
            return Ok(Vec::new());
        }
        let states: Vec<(String, String, i64, Option<String>)> = certificate::Entity::find()
            .select_only()
            .columns([
                certificate::Column::Serial,
                certificate::Column::State,
                certificate::Column::NotAfter,
                certificate::Column::IssuerKeyId,
            ])
            .filter(certificate::Column::Serial.is_in(serials.iter().map(Serial::to_hex)))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(unavailable)?;
        // One read for the log entries: those of the revoked certificates, and those of their
        // CAs (RevokeIssuer), under which a certificate counts as revoked even if a replica
        // issued it from that CA while the revocation committed.
        let revoked: Vec<String> = states
            .iter()
            .filter(|(_, state, ..)| state == CertState::Revoked.as_str())
            .map(|r| r.0.clone())
            .collect();
        let issuers: BTreeSet<String> = states.iter().filter_map(|r| r.3.clone()).collect();
        // Each term only when it names something, and the CA term in the words of the partial
        // index on issuer entries (`WHERE issuer`): then each is an index search (SQLite's
        // multi-index OR), where an empty `IN ()` or `issuer = TRUE` makes it scan the log.
        let mut wanted = Condition::any();
        if !revoked.is_empty() {
            wanted = wanted.add(revocation::Column::Serial.is_in(revoked));
        }
        if !issuers.is_empty() {
            wanted = wanted.add(
                Condition::all()
                    .add(Expr::col(revocation::Column::Issuer))
                    .add(revocation::Column::IssuerKeyId.is_in(issuers)),
            );
        }
        let found = if wanted.is_empty() {
            Vec::new()
        } else {
            let query = revocation::Entity::find().filter(wanted);
            rows(query, &self.db, |m| Ok((m.issuer, convert::revocation(m)?))).await?
        };
        let (mut entries, mut by_issuer) = (HashMap::new(), HashMap::new());
        for entry in found {
            match entry {
                (true, r) => by_issuer.insert(r.issuer_key_id.clone(), r),
                (false, r) => entries.insert(r.serial.to_hex(), r),
            };
        }
        states
            .into_iter()
            .map(|(serial, state, not_after, issuer)| {
                let own = entries.remove(&serial);
                let of_issuer = issuer.and_then(|i| by_issuer.get(&i).cloned());
                let (state, revocation) = match (own, of_issuer) {
                    (Some(own), _) => (state, Some(own)),
                    (None, Some(ca)) if state != CertState::Expired.as_str() => {
                        (CertState::Revoked.as_str().to_owned(), Some(ca))
                    }
                    (None, _) => (state, None),
                };
                Ok(StoredStatus {
                    revocation,
                    serial: convert::serial(&serial)?,
                    state: convert::cert_state(&state)?,
                    not_after: convert::ts(not_after)?,
                })
            })
            .collect()
    }

    pub(crate) async fn revocation_rows_after(
        &self,
        cursor: i64,
        limit: u64,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let query = revocation::Entity::find()
            .filter(revocation::Column::Seq.gt(cursor))
            .order_by_asc(revocation::Column::Seq)
            .limit(limit);
        rows(query, &self.db, convert::revocation).await
    }

    /// What the CRL of the CA `issuer_key_id` lists: the certificates it signed that are
    /// revoked and unexpired at `now`, oldest first (a whole CA's revocation is its issuer's
    /// business, not its own). Only the columns an entry needs are read: a CRL may list a
    /// million.
    pub async fn crl_entries(
        &self,
        issuer_key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<CrlEntry>, StoreError> {
        let rows: Vec<(String, String, i64)> = revocation::Entity::find()
            .select_only()
            .columns([
                revocation::Column::Serial,
                revocation::Column::Reason,
                revocation::Column::RevokedAt,
            ])
            .filter(revocation::Column::NotAfter.gt(now.unix_timestamp()))
            .filter(revocation::Column::IssuerKeyId.eq(issuer_key_id))
            .filter(revocation::Column::Issuer.eq(false))
            .order_by_asc(revocation::Column::Seq)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(serial, reason, revoked_at)| convert::crl_entry(&serial, &reason, revoked_at))
            .collect()
    }

    pub(crate) async fn live_revocation_rows(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let query = revocation::Entity::find()
            .filter(revocation::Column::NotAfter.gt(now.unix_timestamp()))
            .order_by_asc(revocation::Column::Seq);
        rows(query, &self.db, convert::revocation).await
    }
}

/// Floor and head of the revocation log, as seen by `db`.
pub(crate) async fn bounds(db: &impl ConnectionTrait) -> Result<LogBounds, StoreError> {
    let pruned_through = revocation_floor::Entity::find_by_id(1)
        .one(db)
        .await
        .map_err(unavailable)?
        .map_or(0, |f| f.pruned_through);
    let newest = revocation::Entity::find()
        .order_by_desc(revocation::Column::Seq)
        .one(db)
        .await
        .map_err(unavailable)?
        .map_or(0, |r| r.seq);
    Ok(LogBounds {
        pruned_through,
        head: newest.max(pruned_through),
    })
}
