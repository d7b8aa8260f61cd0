//! sea-orm entities. Private to this crate: they become domain types at its edge (`convert.rs`).

pub mod request {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "requests")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub pk: i64,
        pub caller: String,
        pub request_id: String,
        pub kind: String,
        pub payload_hash: String,
        pub state: String,
        pub reason: Option<String>,
        pub spiffe_id: String,
        pub serial: Option<String>,
        pub token_id: Option<String>,
        pub token_expires_at: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
        /// The instance that last inserted or moved the request (its lease holder while APPROVED).
        pub lease_holder: Option<i64>,
        /// SHA-256 (hex) of the policy that decided, if policy was asked.
        pub policy_version: Option<String>,
        /// The `@id`s of the determining policies, comma-separated.
        pub policy_ids: Option<String>,
        /// The risk assessment (0–100, tier, signal names comma-separated).
        pub risk_score: Option<i32>,
        pub risk_tier: Option<String>,
        pub risk_signals: Option<String>,
        /// A held request's terms.
        pub hold_reason: Option<String>,
        pub hold_quorum: Option<i32>,
        pub hold_expires_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod certificate {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "certificates")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub serial: String,
        pub spiffe_id: String,
        pub state: String,
        pub key_type: String,
        pub not_before: i64,
        pub not_after: i64,
        pub der: Vec<u8>,
        pub chain_pem: String,
        pub request_pk: i64,
        pub issued_at: i64,
        pub updated_at: i64,
        /// Hex SKI of the CA that signed it (NULL only before the CA registry existed).
        pub issuer_key_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod join_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "join_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_id: String,
        pub token_hash: String,
        pub spiffe_id: String,
        pub created_by: String,
        pub created_at: i64,
        pub expires_at: i64,
        pub used_at: Option<i64>,
        pub used_by: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub at: i64,
        pub actor: String,
        pub action: String,
        pub subject: String,
        pub spiffe_id: Option<String>,
        /// JSON array of strings.
        pub dns_names: String,
        pub key_type: Option<String>,
        pub not_before: Option<i64>,
        pub not_after: Option<i64>,
        pub policy_version: Option<String>,
        pub policy_rule: Option<String>,
        pub request_id: Option<String>,
        pub detail: Option<String>,
        pub prev_hash: String,
        pub hash: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod revocation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "revocations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub serial: String,
        pub spiffe_id: String,
        pub reason: String,
        pub revoked_at: i64,
        pub not_after: i64,
        pub issuer_key_id: String,
        pub revoked_by: String,
        /// The request that revoked it; NULL for a CA revoked by an approved proposal.
        pub request_pk: Option<i64>,
        /// The entry revokes every certificate `issuer_key_id` signed.
        pub issuer: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod revocation_floor {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "revocation_floor")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub pruned_through: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod identity_block {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "identity_blocks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub spiffe_id: String,
        pub reason: String,
        pub blocked_by: String,
        pub blocked_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod store_probe {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "store_probe")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub probes: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod policy_version {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "policy_versions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: String,
        pub schema_text: String,
        /// JSON array of `{"name", "text"}`, sorted by name.
        pub files: String,
        pub created_at: i64,
        pub created_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod policy_activation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "policy_activations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub version: String,
        pub proposal_id: Option<String>,
        pub label: Option<String>,
        pub activated_at: i64,
        pub activated_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod proposal {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "proposals")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub author: String,
        pub request_id: String,
        pub payload_hash: String,
        pub kind: String,
        pub state: String,
        pub policy_version: Option<String>,
        pub base_version: Option<String>,
        pub label: Option<String>,
        pub subject: Option<String>,
        pub role: Option<String>,
        pub valid_until: Option<i64>,
        pub remove_role: bool,
        pub created_at: i64,
        pub expires_at: i64,
        pub approved_by: Option<String>,
        pub approved_at: Option<i64>,
        pub superseded_by: Option<String>,
        /// What does not fit the columns above (a CA's chain and key location), JSON.
        pub payload: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod role_binding {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "role_bindings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub operator: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub role: String,
        pub valid_until: Option<i64>,
        pub granted_by: String,
        pub granted_at: i64,
        pub proposal_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: String,
        pub algorithm: String,
        /// SPKI DER, lower-case hex.
        pub spki: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_checkpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_checkpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub hash: String,
        pub at: i64,
        pub key_id: String,
        /// Lower-case hex.
        pub signature: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod hold_vote {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "hold_votes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_pk: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub operator: String,
        pub approve: bool,
        pub reason: String,
        pub at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod risk_count {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "risk_counts")]
    pub struct Model {
        /// `caller` or `identity`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        /// The bucket's width in seconds.
        #[sea_orm(primary_key, auto_increment = false)]
        pub span: i32,
        /// Its start ÷ `span`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub bucket: i64,
        pub requests: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod node_identity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "node_identities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub caller: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub spiffe_id: String,
        pub last_asked_at: i64,
        pub allowed: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod authority {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "authorities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: String,
        pub state: String,
        pub subject: String,
        pub chain_pem: String,
        pub key_ref: String,
        pub serial: String,
        pub not_after: i64,
        pub prepared_at: i64,
        pub activated_at: Option<i64>,
        pub retiring_at: Option<i64>,
        pub retired_at: Option<i64>,
        pub revoked_at: Option<i64>,
        pub proposal_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
