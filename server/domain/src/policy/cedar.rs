//! The Cedar side of a decision: the validated policy set, and the request and entities built
//! from a [`DecisionInput`]. Everything that does not depend on the request (type names, action
//! entities, the authorizer) is built once per policy version; a decision builds two entities
//! (principal and resource) and a context.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicySet, Request, RestrictedExpression, Schema,
};

use super::{DecideError, DecisionInput, Principal};
use crate::SpiffeId;
use crate::error::Cause;

/// What Cedar said about one request.
pub(super) struct Outcome {
    pub allowed: bool,
    /// The ids of the policies that determined the decision (Cedar's `reason`).
    pub determining: Vec<String>,
    /// Forbids that failed to evaluate.
    pub errored_forbids: Vec<String>,
}

/// The policy set with what every decision needs.
pub(super) struct Engine {
    set: PolicySet,
    authorizer: Authorizer,
    /// The schema's action entities, so `action in [...]` sees action groups.
    actions: Entities,
    names: Names,
}

/// The entity types and actions of the schema that Mintgate builds requests from.
struct Names {
    trust_domain: EntityTypeName,
    spiffe_id: EntityTypeName,
    node: EntityTypeName,
    workload: EntityTypeName,
    issue: EntityUid,
    renew: EntityUid,
}

impl Engine {
    pub(super) fn new(set: PolicySet, schema: &Schema) -> Result<Self, Cause> {
        let type_name = |name: &str| name.parse::<EntityTypeName>().map_err(Cause::from);
        let action = |id: &str| {
            type_name("Action").map(|t| EntityUid::from_type_name_and_id(t, EntityId::new(id)))
        };
        let names = Names {
            trust_domain: type_name("TrustDomain")?,
            spiffe_id: type_name("SpiffeId")?,
            node: type_name("Node")?,
            workload: type_name("Workload")?,
            issue: action("Issue")?,
            renew: action("Renew")?,
        };
        Ok(Self {
            set,
            authorizer: Authorizer::new(),
            actions: schema.action_entities()?,
            names,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.set.num_of_policies()
    }

    /// Asks Cedar.
    pub(super) fn decide(
        &self,
        input: &DecisionInput<'_>,
        environment: &str,
    ) -> Result<Outcome, DecideError> {
        let (request, entities) = self
            .request(input, environment, None)
            .map_err(DecideError::Engine)?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.set, &entities);
        let diagnostics = response.diagnostics();
        let errored_forbids = diagnostics
            .errors()
            .map(|e| match e {
                AuthorizationError::PolicyEvaluationError(e) => e.policy_id(),
            })
            .filter(|id| {
                self.set
                    .policy(id)
                    .is_some_and(|p| p.effect() == Effect::Forbid)
            })
            .map(ToString::to_string)
            .collect();
        Ok(Outcome {
            allowed: response.decision() == Decision::Allow,
            determining: diagnostics.reason().map(ToString::to_string).collect(),
            errored_forbids,
        })
    }

    /// The Cedar request and entities for `input`. With a schema, both are checked against it
    /// (at load, to prove the schema accepts what Mintgate sends); without, they are not.
    pub(super) fn request(
        &self,
        input: &DecisionInput<'_>,
        environment: &str,
        schema: Option<&Schema>,
    ) -> Result<(Request, Entities), Cause> {
        let n = &self.names;
        let (principal_type, principal_id, action) = match input.principal {
            Principal::Node(id) => (&n.node, id, &n.issue),
            Principal::Workload(id) => (&n.workload, id, &n.renew),
        };
        let principal = self.identity(principal_type, principal_id)?;
        let resource = self.identity(&n.spiffe_id, input.spiffe_id)?;
        let context = Context::from_pairs(context(input, environment))?;
        let request = Request::new(
            principal.uid(),
            action.clone(),
            resource.uid(),
            context,
            schema,
        )?;
        let entities = self
            .actions
            .clone()
            .add_entities([principal, resource], schema)?;
        Ok((request, entities))
    }

    /// An identity entity: its SPIFFE ID as entity id, in its trust domain.
    fn identity(&self, type_name: &EntityTypeName, id: &SpiffeId) -> Result<Entity, Cause> {
        let trust_domain = EntityUid::from_type_name_and_id(
            self.names.trust_domain.clone(),
            EntityId::new(id.trust_domain_str()),
        );
        let path = id.path();
        let segments = path.split('/').filter(|s| !s.is_empty()).count();
        let attrs = HashMap::from([
            (
                "trust_domain".to_owned(),
                RestrictedExpression::new_entity_uid(trust_domain.clone()),
            ),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(path.to_owned()),
            ),
            (
                "segments".to_owned(),
                RestrictedExpression::new_long(i64::try_from(segments).unwrap_or(i64::MAX)),
            ),
        ]);
        let uid = EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id.as_str()));
        Ok(Entity::new(uid, attrs, HashSet::from([trust_domain]))?)
    }
}

/// The `Issuance` context (see the schema).
fn context(input: &DecisionInput<'_>, environment: &str) -> Vec<(String, RestrictedExpression)> {
    let strings = |items: &mut dyn Iterator<Item = String>| {
        RestrictedExpression::new_set(items.map(RestrictedExpression::new_string))
    };
    let mut pairs = vec![
        (
            "key_type".to_owned(),
            RestrictedExpression::new_string(input.key_type.as_str().to_owned()),
        ),
        (
            "dns_names".to_owned(),
            strings(&mut input.dns_names.iter().cloned()),
        ),
        (
            "dns_wildcards".to_owned(),
            strings(&mut input.dns_names.iter().map(|name| dns_wildcard(name))),
        ),
        (
            "attestors".to_owned(),
            strings(&mut input.attestors.iter().map(|a| (*a).to_owned())),
        ),
        (
            "join_token".to_owned(),
            RestrictedExpression::new_bool(input.join_token),
        ),
        (
            "environment".to_owned(),
            RestrictedExpression::new_string(environment.to_owned()),
        ),
    ];
    if let Some(ttl) = input.ttl {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        pairs.push((
            "ttl_seconds".to_owned(),
            RestrictedExpression::new_long(i64::try_from(secs).unwrap_or(i64::MAX)),
        ));
    }
    pairs
}

/// `web.svc.cluster.local` → `*.svc.cluster.local`; a one-label name stays as it is, so no
/// `*.…` pattern covers it.
fn dns_wildcard(name: &str) -> String {
    match name.split_once('.') {
        Some((_, parent)) => format!("*.{parent}"),
        None => name.to_owned(),
    }
}
