//! Signed audit checkpoints (DESIGN §17): written as a write transaction of their own, under the
//! writer lock, so the head they sign is the chain's head when they commit; read for
//! `mintgate audit verify`. A checkpoint of a head that already has one (another replica's) is
//! not written again: the table is keyed by seq and a duplicate counts as done.

use mintgate_domain::audit::{AuditKey, Checkpoint, SignedCheckpoint};
use mintgate_domain::ports::AuditSigner;
use mintgate_domain::store::StoreError;
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryOrder, QuerySelect, TryInsertResult,
};
use time::OffsetDateTime;

use crate::audit::AuditSnapshot;
use crate::entity::{audit_checkpoint, audit_event, audit_key};
use crate::{SqlStore, convert, unavailable};

/// What [`SqlStore::write_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointWrite {
    /// This checkpoint is now durable.
    Written(SignedCheckpoint),
    /// The head already has a checkpoint (or the chain is empty): nothing to sign.
    UpToDate,
}

impl SqlStore {
    /// Signs the audit chain's current head with `signer` and stores the checkpoint (and the
    /// signer's public key, once), unless the head already has one.
    pub async fn write_checkpoint(
        &self,
        signer: &dyn AuditSigner,
        now: OffsetDateTime,
    ) -> Result<CheckpointWrite, StoreError> {
        let mut tx = self.begin_write().await?;
        tx.uncounted();
        let result = async {
            let Some(head) = audit_event::Entity::find()
                .order_by_desc(audit_event::Column::Seq)
                .one(&tx.txn)
                .await
                .map_err(unavailable)?
            else {
                return Ok(CheckpointWrite::UpToDate);
            };
            let newest = newest(&tx.txn).await?;
            if newest.is_some_and(|c| c.checkpoint.seq >= head.seq) {
                return Ok(CheckpointWrite::UpToDate);
            }
            let head = convert::chained_event(head)?;
            let key = signer.public_key();
            insert_key(&tx.txn, key, now).await?;
            let checkpoint = Checkpoint {
                seq: head.event.seq,
                hash: head.hash,
                at: now.unix_timestamp(),
                key_id: key.key_id.clone(),
            };
            let signature = signer
                .sign(&checkpoint.message())
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            let signed = SignedCheckpoint {
                checkpoint,
                signature,
            };
            if insert_checkpoint(&tx.txn, &signed).await? {
                Ok(CheckpointWrite::Written(signed))
            } else {
                Ok(CheckpointWrite::UpToDate)
            }
        }
        .await;
        tx.end(result).await
    }

    /// The newest checkpoint, if any.
    /// The seq of the newest audit event any replica committed (0: none yet).
    pub async fn audit_head(&self) -> Result<i64, StoreError> {
        let head: Option<Option<i64>> = audit_event::Entity::find()
            .select_only()
            .column_as(audit_event::Column::Seq.max(), "head")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(head.flatten().unwrap_or(0))
    }

    pub async fn newest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StoreError> {
        newest(&self.db).await
    }

    /// Every checkpoint, in seq order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        checkpoints(&self.db).await
    }

    /// Every published audit key.
    pub async fn audit_keys(&self) -> Result<Vec<AuditKey>, StoreError> {
        keys(&self.db).await
    }

    /// Stores a checkpoint as given, in a write of its own; whether it was new. For tests (a
    /// second replica's duplicate, a forgery); the server writes through
    /// [`write_checkpoint`](Self::write_checkpoint).
    pub async fn insert_checkpoint(
        &self,
        key: &AuditKey,
        signed: &SignedCheckpoint,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        tx.uncounted();
        let result = async {
            insert_key(&tx.txn, key, now).await?;
            insert_checkpoint(&tx.txn, signed).await
        }
        .await;
        tx.end(result).await
    }
}

impl AuditSnapshot {
    /// Every checkpoint, in seq order.
    pub async fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StoreError> {
        checkpoints(self.txn()).await
    }

    /// Every published audit key.
    pub async fn keys(&self) -> Result<Vec<AuditKey>, StoreError> {
        keys(self.txn()).await
    }
}

async fn insert_key(
    db: &impl ConnectionTrait,
    key: &AuditKey,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let row = audit_key::ActiveModel {
        key_id: Set(key.key_id.clone()),
        algorithm: Set(key.algorithm.clone()),
        spki: Set(hex::encode(&key.spki_der)),
        created_at: Set(now.unix_timestamp()),
    };
    audit_key::Entity::insert(row)
        .on_conflict_do_nothing_on([audit_key::Column::KeyId])
        .exec_without_returning(db)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Whether the checkpoint was new (a duplicate of its seq is left as it was).
async fn insert_checkpoint(
    db: &impl ConnectionTrait,
    signed: &SignedCheckpoint,
) -> Result<bool, StoreError> {
    let c = &signed.checkpoint;
    let row = audit_checkpoint::ActiveModel {
        seq: Set(c.seq),
        hash: Set(hex::encode(c.hash)),
        at: Set(c.at),
        key_id: Set(c.key_id.clone()),
        signature: Set(hex::encode(&signed.signature)),
    };
    let inserted = audit_checkpoint::Entity::insert(row)
        .on_conflict_do_nothing_on([audit_checkpoint::Column::Seq])
        .exec_without_returning(db)
        .await
        .map_err(unavailable)?;
    Ok(matches!(inserted, TryInsertResult::Inserted(n) if n > 0))
}

async fn newest(db: &impl ConnectionTrait) -> Result<Option<SignedCheckpoint>, StoreError> {
    audit_checkpoint::Entity::find()
        .order_by_desc(audit_checkpoint::Column::Seq)
        .one(db)
        .await
        .map_err(unavailable)?
        .map(signed_checkpoint)
        .transpose()
}

async fn checkpoints(db: &impl ConnectionTrait) -> Result<Vec<SignedCheckpoint>, StoreError> {
    audit_checkpoint::Entity::find()
        .order_by_asc(audit_checkpoint::Column::Seq)
        .all(db)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(signed_checkpoint)
        .collect()
}

async fn keys(db: &impl ConnectionTrait) -> Result<Vec<AuditKey>, StoreError> {
    audit_key::Entity::find()
        .order_by_asc(audit_key::Column::KeyId)
        .all(db)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|k| {
            Ok(AuditKey {
                key_id: k.key_id,
                algorithm: k.algorithm,
                spki_der: hex::decode(&k.spki).map_err(|_| convert::corrupt("audit key"))?,
            })
        })
        .collect()
}

fn signed_checkpoint(m: audit_checkpoint::Model) -> Result<SignedCheckpoint, StoreError> {
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint {
            seq: m.seq,
            hash: hex::decode(&m.hash)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| convert::corrupt("checkpoint hash"))?,
            at: m.at,
            key_id: m.key_id,
        },
        signature: hex::decode(&m.signature)
            .map_err(|_| convert::corrupt("checkpoint signature"))?,
    })
}
