//! The Cedar side of a decision: the validated policy set, and the request and entities built
//! from a [`DecisionInput`] or an [`OperationInput`]. Everything that does not depend on the
//! request (type names, action entities, the `Role` entities, the authorizer) is built once per
//! policy version; a decision builds two entities (principal and resource) and a context, once
//! for an issuance's two questions (its own action, then `Action::"Hold"`).
//!
//! Cedar evaluates every policy of the set it is given, and a request's entities are copied and
//! their hierarchy recomputed for each decision, so each action is asked with only what it can
//! use (an index built at load): the policies whose action scope can match it (one whose scope
//! does not match a request neither applies nor fails, so the answer is the same), and its own
//! action entity with the groups it is in. For an issuance action, a policy whose principal
//! scope names a `Role` is left out too. Issuance does not pay for the operator policies or
//! the other way round, and `Action::"Hold"` is not asked when no policy is left for it.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Context, Decision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, Request,
    RestrictedExpression, Schema,
};

use super::operation::{Actor, Operation, OperationInput, ROLES, Target};
use super::{DEFAULT_ENVIRONMENT, DecideError, DecisionInput, Principal};
use crate::error::Cause;
use crate::jwt::ServiceAccount;
use crate::{SpiffeId, TrustDomain};

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
    /// What each action Mintgate asks about is asked with.
    by_action: HashMap<EntityUid, ForAction>,
    authorizer: Authorizer,
    names: Names,
    /// The schema declares `Action::"Hold"`: risk can be mapped to a hold.
    has_hold: bool,
    /// A policy of the set can match `Action::"Hold"`: only then is it asked (a set with none
    /// would deny it, which holds nothing).
    asks_hold: bool,
    /// The schema's `Issuance` context has `risk` (a policy written before holds has not).
    pub(super) sees_risk: bool,
    /// The schema's `Issuance` context has `kubernetes` (a policy written before the `jwt`
    /// attestor has not): only then is it sent.
    sees_kubernetes: bool,
}

/// A request, its entities and the policies to ask about it.
pub(super) type Asked<'a> = (Request, Entities, &'a PolicySet);

/// An issuance as Cedar sees it, for the questions asked about it.
struct Issuance<'a> {
    principal: EntityUid,
    /// `Action::"Issue"` for a node, `Action::"Renew"` for a workload.
    action: &'a EntityUid,
    resource: EntityUid,
    context: Context,
    /// The principal, the resource and the issuance actions.
    entities: Entities,
}

/// What a request for one action is asked with.
struct ForAction {
    /// The policies of the set whose action scope can match it.
    policies: PolicySet,
    /// Its action entity and those of the groups it is in, so `action in [...]` sees groups
    /// (for an issuance action, those of all three); for an operation, a `Role` entity for
    /// each of [`ROLES`] too.
    entities: Entities,
}

/// An action the engine was not built for: a bug.
#[derive(Debug, thiserror::Error)]
#[error("the policy engine has no index for {0}")]
struct NotIndexed(EntityUid);

/// The entity types and actions of the schema that Mintgate builds requests from.
struct Names {
    trust_domain: EntityTypeName,
    spiffe_id: EntityTypeName,
    node: EntityTypeName,
    workload: EntityTypeName,
    operator: EntityTypeName,
    role: EntityTypeName,
    proposal: EntityTypeName,
    issue: EntityUid,
    renew: EntityUid,
    hold: EntityUid,
    /// By `Operation as usize` (the order of [`Operation::ALL`]).
    operations: Vec<EntityUid>,
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
            operator: type_name("Operator")?,
            role: type_name("Role")?,
            proposal: type_name("Proposal")?,
            issue: action("Issue")?,
            renew: action("Renew")?,
            hold: action("Hold")?,
            operations: Operation::ALL
                .iter()
                .map(|op| action(op.as_str()))
                .collect::<Result<_, _>>()?,
        };
        let actions = schema.action_entities()?;
        let has_hold = actions.get(&names.hold).is_some();
        let mut by_action = HashMap::new();
        let issuance = [&names.issue, &names.renew, &names.hold]
            .into_iter()
            .filter(|a| has_hold || *a != &names.hold)
            .map(|a| (a, false));
        let operations = names.operations.iter().map(|a| (a, true));
        // An action's entity and those of the groups it is in.
        let own = |action: &EntityUid| {
            std::iter::once(action.clone())
                .chain(actions.ancestors(action).into_iter().flatten().cloned())
        };
        let entities = |uids: HashSet<EntityUid>, roles: Vec<Entity>| {
            let own = uids
                .into_iter()
                .filter_map(|uid| actions.get(&uid).cloned());
            Entities::from_entities(own.chain(roles), None).map_err(Cause::from)
        };
        // The issuance actions share one set, so an issuance's entities serve both its questions.
        let issuance: Vec<_> = issuance.collect();
        let issuance_entities = entities(
            issuance.iter().flat_map(|(a, _)| own(a)).collect(),
            Vec::new(),
        )?;
        for (action, operation) in issuance.into_iter().chain(operations) {
            let mut policies = PolicySet::new();
            for policy in set.policies() {
                if scope_admits(policy, action, &actions)
                    && (operation || !in_a_role(policy, &names.role))
                {
                    policies.add(policy.clone())?;
                }
            }
            let entities = if operation {
                let roles = ROLES.iter().map(|r| names.role_entity(r)).collect();
                entities(own(action).collect(), roles)?
            } else {
                issuance_entities.clone()
            };
            by_action.insert(action.clone(), ForAction { policies, entities });
        }
        let asks_hold = by_action
            .get(&names.hold)
            .is_some_and(|hold| hold.policies.num_of_policies() > 0);
        Ok(Self {
            set,
            by_action,
            authorizer: Authorizer::new(),
            names,
            has_hold,
            asks_hold,
            sees_risk: true,
            sees_kubernetes: true,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.set.num_of_policies()
    }

    /// Asks Cedar about an issuance and, when it is allowed and a policy can match
    /// `Action::"Hold"`, whether it is held. Both questions are asked with one context and one
    /// set of entities, built once.
    pub(super) fn decide(
        &self,
        input: &DecisionInput<'_>,
        environment: &str,
    ) -> Result<(Outcome, Option<Outcome>), DecideError> {
        let issuance = self
            .issuance(input, environment, None)
            .map_err(DecideError::Engine)?;
        let ask = |action| {
            let (request, policies) = self
                .question(&issuance, action, None)
                .map_err(DecideError::Engine)?;
            Ok::<_, DecideError>(self.ask(&request, &issuance.entities, policies))
        };
        let outcome = ask(issuance.action)?;
        let held = match outcome.allowed && self.asks_hold {
            true => Some(ask(&self.names.hold)?),
            false => None,
        };
        Ok((outcome, held))
    }

    pub(super) fn has_hold(&self) -> bool {
        self.has_hold
    }

    /// Learns whether the schema declares `context.kubernetes`, from whether a `sample` that
    /// carries one is accepted by it.
    pub(super) fn learn_kubernetes(&mut self, sample: &DecisionInput<'_>, schema: &Schema) {
        let account = crate::jwt::ServiceAccount {
            namespace: "default".to_owned(),
            name: "default".to_owned(),
            pod: Some("pod".to_owned()),
        };
        let with = DecisionInput {
            kubernetes: Some(&account),
            ..*sample
        };
        self.sees_kubernetes = true;
        self.sees_kubernetes = self
            .request(&with, DEFAULT_ENVIRONMENT, Some(schema), false)
            .is_ok();
    }

    /// Asks Cedar about an operation.
    pub(super) fn authorize(
        &self,
        input: &OperationInput<'_>,
        environment: &str,
    ) -> Result<Outcome, DecideError> {
        let (request, entities, policies) = self
            .operation_request(input, environment, None)
            .map_err(DecideError::Engine)?;
        Ok(self.ask(&request, &entities, policies))
    }

    fn ask(&self, request: &Request, entities: &Entities, policies: &PolicySet) -> Outcome {
        let response = self.authorizer.is_authorized(request, policies, entities);
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
        Outcome {
            allowed: response.decision() == Decision::Allow,
            determining: diagnostics.reason().map(ToString::to_string).collect(),
            errored_forbids,
        }
    }

    /// The Cedar request and entities for `input` (its `Action::"Hold"` with `hold`), and the
    /// policies to ask. With a schema, the request and entities are checked against it (at
    /// load, to prove the schema accepts what Mintgate sends); without, they are not.
    pub(super) fn request(
        &self,
        input: &DecisionInput<'_>,
        environment: &str,
        schema: Option<&Schema>,
        hold: bool,
    ) -> Result<Asked<'_>, Cause> {
        let issuance = self.issuance(input, environment, schema)?;
        let action = if hold {
            &self.names.hold
        } else {
            issuance.action
        };
        let (request, policies) = self.question(&issuance, action, schema)?;
        Ok((request, issuance.entities, policies))
    }

    /// What every question about `input` is asked with.
    fn issuance(
        &self,
        input: &DecisionInput<'_>,
        environment: &str,
        schema: Option<&Schema>,
    ) -> Result<Issuance<'_>, Cause> {
        let n = &self.names;
        let (principal_type, principal_id, action) = match input.principal {
            Principal::Node(id) => (&n.node, id, &n.issue),
            Principal::Workload(id) => (&n.workload, id, &n.renew),
        };
        let principal = n.identity(principal_type, principal_id, [])?;
        let resource = n.identity(&n.spiffe_id, input.spiffe_id, [])?;
        let kubernetes = input.kubernetes.filter(|_| self.sees_kubernetes);
        let context = Context::from_pairs(context(input, environment, self.sees_risk, kubernetes))?;
        Ok(Issuance {
            principal: principal.uid(),
            action,
            resource: resource.uid(),
            context,
            entities: self
                .index(action)?
                .entities
                .clone()
                .add_entities([principal, resource], schema)?,
        })
    }

    /// The request of `issuance` for `action` (its own, or `Action::"Hold"`), and the policies
    /// to ask.
    fn question(
        &self,
        issuance: &Issuance<'_>,
        action: &EntityUid,
        schema: Option<&Schema>,
    ) -> Result<(Request, &PolicySet), Cause> {
        let request = Request::new(
            issuance.principal.clone(),
            action.clone(),
            issuance.resource.clone(),
            issuance.context.clone(),
            schema,
        )?;
        Ok((request, &self.index(action)?.policies))
    }

    /// The same for an operation. An operator is `in` a `Role` for each role it holds; with a
    /// schema, the `Role` entity of each is checked too.
    pub(super) fn operation_request(
        &self,
        input: &OperationInput<'_>,
        environment: &str,
        schema: Option<&Schema>,
    ) -> Result<Asked<'_>, Cause> {
        let n = &self.names;
        let mut entities = Vec::with_capacity(2);
        let principal = match input.actor {
            Actor::Operator { id, roles } => {
                let parents = roles.iter().map(|r| n.role_uid(r));
                // Each of ROLES has an entity already; another role needs one, and a check
                // checks every role's.
                entities.extend(
                    roles
                        .iter()
                        .filter(|r| schema.is_some() || !ROLES.contains(&r.as_str()))
                        .map(|r| n.role_entity(r)),
                );
                n.identity(&n.operator, id, parents)?
            }
            Actor::Node(id) => n.identity(&n.node, id, [])?,
            Actor::Workload(id) => n.identity(&n.workload, id, [])?,
        };
        let (resource_uid, resource) = match input.target {
            Target::Identity(id) => {
                let entity = n.identity(&n.spiffe_id, id, [])?;
                (entity.uid(), Some(entity))
            }
            // No attributes, no parents: its uid is all a policy sees.
            Target::TrustDomain(td) => (n.trust_domain_uid(td.as_str()), None),
            Target::Proposal {
                id,
                kind,
                author,
                trust_domain,
            } => {
                let entity = n.proposal(id, kind, author, trust_domain)?;
                (entity.uid(), Some(entity))
            }
        };
        let context = Context::from_pairs([(
            "environment".to_owned(),
            RestrictedExpression::new_string(environment.to_owned()),
        )])?;
        // `operations` holds one action per `Operation::ALL`, in declaration order.
        let action = &n.operations[input.operation as usize];
        let request = Request::new(
            principal.uid(),
            action.clone(),
            resource_uid,
            context,
            schema,
        )?;
        entities.push(principal);
        entities.extend(resource);
        let index = self.index(action)?;
        let entities = index.entities.clone().add_entities(entities, schema)?;
        Ok((request, entities, &index.policies))
    }

    fn index(&self, action: &EntityUid) -> Result<&ForAction, Cause> {
        self.by_action
            .get(action)
            .ok_or_else(|| NotIndexed(action.clone()).into())
    }
}

impl Names {
    fn trust_domain_uid(&self, name: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.trust_domain.clone(), EntityId::new(name))
    }

    fn role_uid(&self, role: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.role.clone(), EntityId::new(role))
    }

    fn role_entity(&self, role: &str) -> Entity {
        Entity::new_no_attrs(self.role_uid(role), HashSet::new())
    }

    /// A proposal entity: its id as entity id, in its trust domain.
    fn proposal(
        &self,
        id: &str,
        kind: &str,
        author: &str,
        trust_domain: &TrustDomain,
    ) -> Result<Entity, Cause> {
        let attrs = HashMap::from([
            (
                "kind".to_owned(),
                RestrictedExpression::new_string(kind.to_owned()),
            ),
            (
                "author".to_owned(),
                RestrictedExpression::new_string(author.to_owned()),
            ),
        ]);
        let uid = EntityUid::from_type_name_and_id(self.proposal.clone(), EntityId::new(id));
        let parents = HashSet::from([self.trust_domain_uid(trust_domain.as_str())]);
        Ok(Entity::new(uid, attrs, parents)?)
    }

    /// An identity entity: its SPIFFE ID as entity id, in its trust domain and `parents`.
    fn identity(
        &self,
        type_name: &EntityTypeName,
        id: &SpiffeId,
        parents: impl IntoIterator<Item = EntityUid>,
    ) -> Result<Entity, Cause> {
        let trust_domain = self.trust_domain_uid(id.trust_domain_str());
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
        let parents = std::iter::once(trust_domain).chain(parents).collect();
        Ok(Entity::new(uid, attrs, parents)?)
    }
}

/// Whether `policy`'s action scope can match `action`: any action, `action` itself, or a group
/// `action` is in.
fn scope_admits(policy: &Policy, action: &EntityUid, actions: &Entities) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(scope) => scope == *action,
        ActionConstraint::In(groups) => groups.iter().any(|group| {
            group == action
                || actions
                    .ancestors(action)
                    .is_some_and(|mut ancestors| ancestors.any(|a| a == group))
        }),
    }
}

/// Whether `policy`'s principal scope names a `Role`: an issuance's principal (a node or a
/// workload, whose only parent is its trust domain) is never one nor in one, so such a policy
/// never applies to an issuance.
fn in_a_role(policy: &Policy, role: &EntityTypeName) -> bool {
    match policy.principal_constraint() {
        PrincipalConstraint::In(uid)
        | PrincipalConstraint::Eq(uid)
        | PrincipalConstraint::IsIn(_, uid) => uid.type_name() == role,
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => false,
    }
}

/// The `Issuance` context (see the schema); `risk` only for a schema that declares it, and
/// `kubernetes` when given.
fn context(
    input: &DecisionInput<'_>,
    environment: &str,
    risk: bool,
    kubernetes: Option<&ServiceAccount>,
) -> Vec<(String, RestrictedExpression)> {
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
    if let Some(account) = kubernetes {
        let text = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let mut record = vec![
            ("namespace".to_owned(), text(&account.namespace)),
            ("service_account".to_owned(), text(&account.name)),
        ];
        if let Some(pod) = &account.pod {
            record.push(("pod".to_owned(), text(pod)));
        }
        if let Ok(record) = RestrictedExpression::new_record(record) {
            pairs.push(("kubernetes".to_owned(), record));
        }
    }
    if risk {
        let assessment = input.risk;
        let record = [
            (
                "score".to_owned(),
                RestrictedExpression::new_long(i64::from(assessment.score)),
            ),
            (
                "tier".to_owned(),
                RestrictedExpression::new_string(assessment.tier.as_str().to_owned()),
            ),
            (
                "signals".to_owned(),
                strings(&mut assessment.signals.iter().map(|s| s.as_str().to_owned())),
            ),
        ];
        if let Ok(record) = RestrictedExpression::new_record(record) {
            pairs.push(("risk".to_owned(), record));
        }
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
