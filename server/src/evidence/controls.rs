//! `controls.md`: each NIST SP 800-53 control the export bears on, mapped to the files and
//! fields that evidence it — and, as plainly, what the export does not show.

use super::SeqRange;

/// What the export holds, for the text.
pub(super) struct Facts {
    pub events: usize,
    pub in_period: Option<SeqRange>,
    pub checkpoints: usize,
    pub policy_versions: usize,
    pub proposals: usize,
    pub bindings: usize,
    pub ca_cert: bool,
    pub crl: bool,
    /// CAs in `authorities.json`.
    pub authorities: usize,
}

pub(super) fn render(facts: &Facts) -> String {
    let in_period = facts.in_period.map_or_else(
        || "none of them falls in the period".to_owned(),
        |r| format!("seq {r} fall in the period"),
    );
    let ca = if facts.ca_cert {
        "`ca.pem`: the issuing CA certificate (the server's own over `Admin/ExportEvidence`; \
         `--ca-cert` from the command line)."
    } else {
        "No CA certificate was given to the export (`--ca-cert`): **not evidenced here**."
    };
    let crl = if facts.crl {
        "`crl.der`: the CRL as the server's `/crl` served it at export time (DER, RFC 5280), \
         signed by the CA key; `evidence verify` checks its signature against `ca.pem` (and \
         `openssl crl -inform DER -in crl.der -CAfile ca.pem -noout` does the same). It lists \
         every revoked certificate that has not yet expired; earlier revocations are the \
         `certificate.revoked` events."
    } else {
        "No CRL was given to the export (`--crl`, the file a running server's `/crl` serves): \
         **not evidenced here**. `Admin/ExportEvidence` includes the server's own."
    };
    format!(
        "# Controls evidenced by this export\n\
         \n\
         NIST SP 800-53 rev. 5. `mintgate evidence verify DIR` checks the manifest, the audit \
         chain, the checkpoint signatures, the policy versions and the CRL's signature offline. The export holds \
         {events} audit events ({in_period}; the chain is exported from seq 1 so it verifies from \
         its start, see `manifest.json` `exported` and `in_period`), {checkpoints} signed \
         checkpoints, {versions} policy versions, {proposals} proposals, {bindings} role \
         bindings and {authorities} CAs.\n\
         \n\
         ## AC-5 Separation of duties\n\
         \n\
         - `policy/proposals.jsonl`: every proposal created or decided in the period, with \
         `author` and `approved_by`; the server refuses an approval by the author (two-person \
         rule for policy versions, role bindings, unblocks, every CA rotation step and revoking \
         an issuer).\n\
         - `authorities.json`: each CA state change names its proposal and approver.\n\
         - `policy/activations.jsonl`: each activation names its `proposal_id` and the approver \
         (`activated_by`); `bootstrap` is the first start's own policy directory.\n\
         - `audit-events.jsonl`: `proposal.created` and `proposal.approved` events (`actor`, \
         `subject`, `detail`).\n\
         \n\
         ## AC-6 Least privilege\n\
         \n\
         - `role-bindings.json`: every role binding in force at any time in the period, one \
         entry per span: `granted_at`, `granted_by` and `grant_proposal`, `valid_until`, and \
         `ended_at`, `ended_by` and `end_proposal` when a removal or a new grant ended it; \
         `in_force_at_export`. Rebuilt from the bindings table and the applied role-binding \
         proposals (`policy/proposals.jsonl` lists those of the period). A binding from the first start's \
         configuration that was re-granted since shows from its re-grant; its first grant is \
         the `role.granted` event by `bootstrap` in `audit-events.jsonl`.\n\
         - `policy/<version>/*.cedar`: what each role may do (Cedar, evaluated for every \
         operator call).\n\
         - `operator.break_glass` events: each use of the `admin` role.\n\
         - Not in this export: when each binding was last used. `mintgate evidence \
         access-review` lists it from the database for a periodic review (AC-2).\n\
         \n\
         ## AU-2 Event logging / AU-3 Content of audit records / AU-8 Time stamps\n\
         \n\
         - `audit-events.jsonl`: requests (`request.*`), issuance (`certificate.issued`, \
         `certificate.superseded`), revocation (`certificate.revoked`), blocks \
         (`identity.blocked`, `identity.unblocked`), join tokens, change control (`proposal.*`, \
         `policy.*`, `role.*`). Each has `actor` (the caller's mTLS SPIFFE ID), `action`, \
         `subject`, scope (`spiffe_id`, `dns_names`, `key_type`, `not_before`, `not_after`), \
         `policy_version` and `policy_rule`, `request_id`, and `at` (unix seconds, server clock).\n\
         - Not evidenced offline: that every certificate, revocation and request in the database \
         has its event (`mintgate audit verify` checks that against the database).\n\
         \n\
         ## AU-9 Protection of audit information\n\
         \n\
         - `audit-events.jsonl` `prev_hash`/`hash`: `hash = SHA-256(prev_hash || canonical \
         event)`; an edited, inserted, deleted or reordered event breaks the chain.\n\
         - `checkpoints.jsonl`: the chain head (`seq`, `hash`, `at`) signed with the audit key \
         (not the CA key); a chain rewritten with every hash recomputed, or cut, fails them.\n\
         - `manifest.json`: SHA-256 and size of every file.\n\
         - Not evidenced here: that the database refuses updates and deletes (triggers; see the \
         deployment), and who holds the audit private key.\n\
         \n\
         ## AU-10 Non-repudiation\n\
         \n\
         - Each event's `actor` is the SPIFFE ID of the client certificate that authenticated \
         the call (mutual TLS); the chain and the signed checkpoints bind the events to the \
         audit key's holder at each checkpoint time.\n\
         - Limits: events are not signed by their actors, and events after the newest checkpoint \
         are pinned only by the manifest. Check checkpoints against a public key obtained \
         independently (`evidence verify --public-key`), not only `audit-keys.pem`.\n\
         \n\
         ## CM-3 Configuration change control\n\
         \n\
         - `policy/<version>/`: the text of every policy version active in the period (and the \
         one active at its start); the directory name is the version, the SHA-256 of its texts, \
         re-computed by `evidence verify`.\n\
         - `policy/activations.jsonl` and `policy/proposals.jsonl`: who proposed, who approved, \
         the change label (ticket), when; `policy.activated` events in the chain.\n\
         - `authorities.json`: every change to which CA signs (prepare, activate, retire, revoke) \
         with its proposal; `ca.prepared`, `ca.activated`, `ca.retired` and `issuer.revoked` \
         events in the chain.\n\
         \n\
         ## IA-5 Authenticator management\n\
         \n\
         - `certificate.issued` events: each certificate's `not_before`/`not_after` (short \
         lifetimes), `key_type` and identity; `certificate.superseded` on renewal; \
         `certificate.revoked` with its reason; `join_token.created` for one-time join tokens.\n\
         - Not evidenced: the certificates themselves and the join tokens' secrets (never \
         exported).\n\
         \n\
         ## SC-12 Cryptographic key establishment and management\n\
         \n\
         - `audit-keys.pem`: the audit public keys; each checkpoint names its key by `key_id` \
         (SHA-256 of the key's SubjectPublicKeyInfo).\n\
         - `key_type` of every issued certificate (workload keys are generated by the workload; \
         the server only sees CSRs).\n\
         - `authorities.json`: every issuing CA with its state history: when each was prepared \
         (in the trust bundle before it signed anything), activated, set retiring, retired or \
         revoked, by which proposal, approved by whom, and the seq of that approval in \
         `audit-events.jsonl` (`evidence verify` checks each such seq is that approval, and \
         that every state change names its proposal, except the first CA's start and a CA \
         adopted from `[ca]` after the active one ran out, which a `ca.adopted` event records).\n\
         - Not evidenced: where each CA's private key is held (file or PKCS#11 is configuration, \
         not recorded) and the audit key's custody.\n\
         \n\
         ## SC-17 Public key infrastructure certificates\n\
         \n\
         - {ca}\n\
         - `certificate.issued` / `certificate.revoked` events: what was issued to whom, under \
         which policy rule, and what was revoked.\n\
         - {crl}\n\
         - `authorities.json`: every CA certificate (`chain_pem` up to the root) and its state \
         history; `evidence verify` checks each chain's first certificate has the `key_id` it is \
         listed under.\n\
         - Not evidenced: the CRLs of CAs other than the active one (each is served at \
         `/crl/<key_id>` while the CA is in the trust bundle).\n",
        events = facts.events,
        checkpoints = facts.checkpoints,
        versions = facts.policy_versions,
        proposals = facts.proposals,
        bindings = facts.bindings,
        authorities = facts.authorities,
    )
}
