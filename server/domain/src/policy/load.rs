//! Loading a policy directory, all or nothing. Each file is parsed on its own (so every
//! position is a line in that file), each policy is re-keyed by its `@id` (Cedar's parser numbers
//! them `policy0`, `policy1`, … per file and ignores `@id`), its annotations and the trust domains
//! it names are checked, then the merged set is validated in strict mode and the schema is
//! proved to accept the requests [`super::cedar::Engine`] builds. Every problem found is
//! reported, not just the first.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use cedar_policy::{Effect, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use super::cedar::Engine;
use super::operation;
use super::{
    DEFAULT_ENVIRONMENT, DEFAULT_MAX_TTL_SECONDS, DecisionInput, Limits, MAX_MAX_TTL_SECONDS,
    MAX_QUORUM, MIN_MAX_TTL_SECONDS, PolicyFile, PolicySource, Principal, SCHEMA_FILE,
};
use crate::risk::RiskAssessment;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::types::KeyType;

/// The annotations a policy may carry. Anything else is refused, so a typo never silently
/// grants more than meant.
const ANNOTATIONS: [&str; 6] = [
    "id",
    "description",
    "max_ttl_seconds",
    "server_auth",
    "hold",
    "quorum",
];
/// The annotations that shape what a permit grants; a forbid carries none.
const PERMIT_ONLY: [&str; 4] = ["max_ttl_seconds", "server_auth", "hold", "quorum"];
/// The longest `@hold` reason.
const MAX_HOLD_REASON: usize = 200;
/// Longest `@id`.
const MAX_ID_LEN: usize = 128;

/// One problem in a policy directory: the file, the position when known, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// A policy directory that does not load, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "the policy does not validate ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// A loaded policy's parts.
pub(super) struct Loaded {
    pub version: String,
    pub engine: Engine,
    pub limits: HashMap<String, Limits>,
    pub warnings: Vec<Problem>,
}

pub(super) fn load(
    source: &PolicySource,
    trust_domain: Option<&TrustDomain>,
) -> Result<Loaded, LoadError> {
    let mut files: Vec<&PolicyFile> = source.files.iter().collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let mut loader = Loader {
        files: &files,
        problems: Vec::new(),
        warnings: Vec::new(),
        domain: trust_domain.map(|td| (td.as_str().to_owned(), true)),
        places: HashMap::new(),
        set: PolicySet::new(),
        limits: HashMap::new(),
    };
    let schema = loader.schema(&source.schema);
    for index in 0..files.len() {
        loader.file(index);
    }
    let engine = schema.and_then(|schema| loader.check_set(schema, trust_domain));
    match engine {
        Some(engine) if loader.problems.is_empty() => Ok(Loaded {
            version: version(&source.schema, &files),
            engine,
            limits: loader.limits,
            warnings: loader.warnings,
        }),
        _ => Err(LoadError {
            problems: loader.problems,
        }),
    }
}

/// SHA-256 over the schema and the policy texts sorted, each prefixed with its length: the
/// source texts, never a re-rendering (Cedar's `to_cedar` reorders policies).
fn version(schema: &str, files: &[&PolicyFile]) -> String {
    let mut texts: Vec<&str> = files.iter().map(|f| f.text.as_str()).collect();
    texts.sort_unstable();
    let mut h = Sha256::new();
    for text in std::iter::once(schema).chain(texts) {
        h.update((text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Where a policy starts: which file, at which byte.
#[derive(Debug, Clone, Copy)]
struct Place {
    file: usize,
    offset: usize,
}

struct Loader<'a> {
    /// Sorted by name.
    files: &'a [&'a PolicyFile],
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The trust domain policies must name, and whether it is the server's (else the first
    /// one a policy named).
    domain: Option<(String, bool)>,
    /// Where each policy of `set` is, by id.
    places: HashMap<String, Place>,
    set: PolicySet,
    limits: HashMap<String, Limits>,
}

impl Loader<'_> {
    fn schema(&mut self, text: &str) -> Option<Schema> {
        match Schema::from_cedarschema_str(text) {
            Ok((schema, warnings)) => {
                for w in warnings {
                    self.warnings
                        .push(from_diagnostic(SCHEMA_FILE, text, &w, None));
                }
                Some(schema)
            }
            Err(e) => {
                self.problems
                    .push(from_diagnostic(SCHEMA_FILE, text, &e, None));
                for related in e.related().into_iter().flatten() {
                    self.problems
                        .push(from_diagnostic(SCHEMA_FILE, text, related, None));
                }
                None
            }
        }
    }

    /// Parses one file and adds its policies to the set under their `@id`.
    fn file(&mut self, index: usize) {
        let file = self.files[index];
        let parsed = match file.text.parse::<PolicySet>() {
            Ok(set) => set,
            Err(errors) => {
                for e in errors.iter() {
                    self.problems
                        .push(from_diagnostic(&file.name, &file.text, e, None));
                }
                return;
            }
        };
        // Parser order is file order: policy0, policy1, … (templates share the numbering).
        let mut entries: Vec<(usize, Option<cedar_policy::Policy>, String)> = parsed
            .policies()
            .map(|p| (p.id().clone(), Some(p.clone()), p.to_cedar()))
            .chain(
                parsed
                    .templates()
                    .map(|t| (t.id().clone(), None, Some(t.to_cedar()))),
            )
            .map(|(id, policy, text)| (parser_index(&id), policy, text.unwrap_or_default()))
            .collect();
        entries.sort_by_key(|(n, _, _)| *n);
        let mut cursor = 0;
        for (_, policy, text) in entries {
            let offset = file.text[cursor..]
                .find(&text)
                .map_or(cursor, |at| cursor + at);
            cursor = offset + text.len();
            let place = Place {
                file: index,
                offset,
            };
            match policy {
                Some(policy) => self.policy(policy, place),
                None => self.problem(
                    place,
                    "templates (policies with ?principal or ?resource) are not supported"
                        .to_owned(),
                ),
            }
        }
    }

    fn policy(&mut self, policy: cedar_policy::Policy, place: Place) {
        let id = match policy.annotation("id") {
            None => {
                self.problem(place, "the policy has no @id(\"…\")".to_owned());
                None
            }
            Some(id) if !valid_id(id) => {
                self.problem(
                    place,
                    format!(
                        "@id({id:?}) must be 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ : - (no spaces \
                         or commas)"
                    ),
                );
                None
            }
            Some(id) => match self.places.get(id) {
                Some(first) => {
                    let first = self.describe(*first);
                    self.problem(place, format!("@id({id:?}) is already used at {first}"));
                    None
                }
                None => Some(id.to_owned()),
            },
        };
        for (key, _) in policy.annotations() {
            if !ANNOTATIONS.contains(&key) {
                self.problem(
                    place,
                    format!(
                        "unknown annotation @{key} (known: @{})",
                        ANNOTATIONS.join(", @")
                    ),
                );
            }
        }
        let limits = self.limits_of(&policy, place);
        self.trust_domains(&policy, place);
        // A policy with a bad @id is still validated, under a name that says where it is.
        let key = id
            .clone()
            .unwrap_or_else(|| format!("{}@{}", self.files[place.file].name, place.offset));
        if let (Some(id), Some(limits)) = (id, limits)
            && policy.effect() == Effect::Permit
        {
            self.limits.insert(id, limits);
        }
        self.places.insert(key.clone(), place);
        if let Err(e) = self.set.add(policy.new_id(PolicyId::new(&key))) {
            self.problem(place, e.to_string());
        }
    }

    /// The limits a permit's annotations set; a forbid may set none.
    fn limits_of(&mut self, policy: &cedar_policy::Policy, place: Place) -> Option<Limits> {
        let mut limits = Limits {
            max_ttl: Duration::from_secs(DEFAULT_MAX_TTL_SECONDS),
            server_auth: false,
            hold: None,
            quorum: 1,
        };
        let mut ok = true;
        if let Some(value) = policy.annotation("max_ttl_seconds") {
            match value.parse::<u64>() {
                Ok(s) if (MIN_MAX_TTL_SECONDS..=MAX_MAX_TTL_SECONDS).contains(&s) => {
                    limits.max_ttl = Duration::from_secs(s);
                }
                _ => {
                    ok = false;
                    self.problem(
                        place,
                        format!(
                            "@max_ttl_seconds({value:?}) must be whole seconds from \
                             {MIN_MAX_TTL_SECONDS} to {MAX_MAX_TTL_SECONDS}"
                        ),
                    );
                }
            }
        }
        if let Some(value) = policy.annotation("server_auth") {
            match value {
                "true" => limits.server_auth = true,
                "false" => {}
                _ => {
                    ok = false;
                    self.problem(
                        place,
                        format!("@server_auth({value:?}) must be \"true\" or \"false\""),
                    );
                }
            }
        }
        if let Some(value) = policy.annotation("hold") {
            let value = value.trim();
            if value.is_empty() || value.len() > MAX_HOLD_REASON {
                ok = false;
                self.problem(
                    place,
                    format!(
                        "@hold names why the request waits for approvers: 1 to \
                         {MAX_HOLD_REASON} characters"
                    ),
                );
            } else {
                limits.hold = Some(value.to_owned());
            }
        }
        if let Some(value) = policy.annotation("quorum") {
            match value.parse::<u8>() {
                Ok(n) if (1..=MAX_QUORUM).contains(&n) => limits.quorum = n,
                _ => {
                    ok = false;
                    self.problem(
                        place,
                        format!("@quorum({value:?}) must be a number of approvers from 1 to {MAX_QUORUM}"),
                    );
                }
            }
        }
        if policy.effect() == Effect::Forbid {
            for key in PERMIT_ONLY {
                if policy.annotation(key).is_some() {
                    ok = false;
                    self.problem(
                        place,
                        format!("@{key} shapes what a permit grants; a forbid cannot carry it"),
                    );
                }
            }
        }
        ok.then_some(limits)
    }

    /// Every trust domain the policy names (a `TrustDomain` literal, or the SPIFFE ID of a
    /// `SpiffeId`, `Node` or `Workload` literal) must be the server's.
    fn trust_domains(&mut self, policy: &cedar_policy::Policy, place: Place) {
        for uid in policy.entity_literals() {
            let id = uid.id().unescaped();
            let named = match uid.type_name().to_string().as_str() {
                "TrustDomain" => TrustDomain::parse(id)
                    .map(|td| td.as_str().to_owned())
                    .map_err(|e| format!("TrustDomain::{id:?} is not a trust domain: {e}")),
                t @ ("SpiffeId" | "Node" | "Workload") => SpiffeId::parse(id)
                    .map(|s| s.trust_domain_str().to_owned())
                    .map_err(|e| format!("{t}::{id:?} is not a SPIFFE ID: {e}")),
                _ => continue,
            };
            match named {
                Err(message) => self.problem(place, message),
                Ok(named) => match &self.domain {
                    None => self.domain = Some((named, false)),
                    Some((expected, _)) if *expected == named => {}
                    Some((expected, true)) => {
                        let message = format!(
                            "names trust domain {named}, but this server's trust domain is \
                             {expected}"
                        );
                        self.problem(place, message);
                    }
                    Some((expected, false)) => {
                        let message = format!(
                            "names trust domain {named}, but other policies name {expected}: \
                             a policy serves one trust domain"
                        );
                        self.problem(place, message);
                    }
                },
            }
        }
    }

    /// Strict validation of the whole set, then the proof that the schema accepts what
    /// Mintgate sends. Returns the engine when both pass.
    fn check_set(&mut self, schema: Schema, trust_domain: Option<&TrustDomain>) -> Option<Engine> {
        let result = Validator::new(schema.clone()).validate(&self.set, ValidationMode::Strict);
        // The validator's order is a hash map's: sort, so the same directory reads the same
        // (and the same finding in several request environments reads once).
        let sorted = |mut found: Vec<Problem>| {
            found.sort_by(|a, b| {
                (&a.file, a.position, &a.message).cmp(&(&b.file, b.position, &b.message))
            });
            found.dedup();
            found
        };
        let errors = result
            .validation_errors()
            .map(|e| self.located(e.policy_id().as_ref(), e))
            .collect();
        self.problems.extend(sorted(errors));
        let warnings = result
            .validation_warnings()
            .map(|w| self.located(w.policy_id().as_ref(), w))
            .collect();
        self.warnings.extend(sorted(warnings));
        let mut engine = match Engine::new(self.set.clone(), &schema) {
            Ok(engine) => engine,
            Err(e) => {
                self.problems
                    .push(schema_problem(format!("does not load: {e}")));
                return None;
            }
        };
        let td = trust_domain.map_or("example.org", TrustDomain::as_str);
        let id = |path: &str| SpiffeId::parse(&format!("spiffe://{td}{path}"));
        let (Ok(node), Ok(wanted)) = (id("/node/n"), id("/ns/web/sa/api")) else {
            return None;
        };
        let dns = ["api.example.com".to_owned()];
        let risk = RiskAssessment::none();
        let sample = |principal| DecisionInput {
            principal,
            spiffe_id: &wanted,
            ttl: Some(Duration::from_secs(600)),
            key_type: KeyType::EcdsaP256,
            dns_names: &dns,
            attestors: &["node_cert"],
            join_token: false,
            kubernetes: None,
            risk: &risk,
        };
        // A schema written before risk existed has no `context.risk`: its policy decides
        // without it (and so cannot map risk to a hold).
        let with_risk = engine.request(
            &sample(Principal::Node(&node)),
            DEFAULT_ENVIRONMENT,
            Some(&schema),
            false,
        );
        if with_risk.is_err() {
            engine.sees_risk = false;
            let without = engine.request(
                &sample(Principal::Node(&node)),
                DEFAULT_ENVIRONMENT,
                Some(&schema),
                false,
            );
            if without.is_ok() {
                self.warnings.push(schema_problem(
                    "the Issuance context has no `risk` (DESIGN §12): decisions of this policy do not see risk"
                        .to_owned(),
                ));
            } else {
                engine.sees_risk = true;
            }
        }
        engine.learn_kubernetes(&sample(Principal::Node(&node)), &schema);
        let mut asked = vec![
            (Principal::Node(&node), false, "a Node's Action::\"Issue\""),
            (
                Principal::Workload(&wanted),
                false,
                "a Workload's Action::\"Renew\"",
            ),
        ];
        if engine.has_hold() {
            asked.push((Principal::Node(&node), true, "a Node's Action::\"Hold\""));
            asked.push((
                Principal::Workload(&wanted),
                true,
                "a Workload's Action::\"Hold\"",
            ));
        }
        for (principal, hold, action) in asked {
            if let Err(e) =
                engine.request(&sample(principal), DEFAULT_ENVIRONMENT, Some(&schema), hold)
            {
                self.problems.push(schema_problem(format!(
                    "does not describe the requests Mintgate makes: {action}: {e}"
                )));
            }
        }
        for message in operation::unaccepted(&engine, &schema, td) {
            self.problems.push(schema_problem(message));
        }
        Some(engine)
    }

    /// A validator finding about policy `id`, at its label or else where the policy starts.
    fn located(&self, id: &str, d: &dyn Diagnostic) -> Problem {
        match self.places.get(id) {
            Some(place) => {
                let file = self.files[place.file];
                from_diagnostic(&file.name, &file.text, d, Some(place.offset))
            }
            None => Problem {
                file: id.to_owned(),
                position: None,
                message: d.to_string(),
            },
        }
    }

    fn problem(&mut self, place: Place, message: String) {
        let file = self.files[place.file];
        self.problems.push(Problem {
            file: file.name.clone(),
            position: Some(position(&file.text, place.offset)),
            message,
        });
    }

    /// `file:line` of a place, for messages that point at another policy.
    fn describe(&self, place: Place) -> String {
        let file = self.files[place.file];
        let (line, _) = position(&file.text, place.offset);
        format!("{}:{line}", file.name)
    }
}

/// `policy7` → 7 (the parser's numbering; anything else sorts last).
fn parser_index(id: &PolicyId) -> usize {
    id.to_string()
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn schema_problem(message: String) -> Problem {
    Problem {
        file: SCHEMA_FILE.to_owned(),
        position: None,
        message,
    }
}

/// A Cedar diagnostic as a problem: its message (and help), at its first label, else at
/// `fallback`.
fn from_diagnostic(file: &str, text: &str, d: &dyn Diagnostic, fallback: Option<usize>) -> Problem {
    let offset = d
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
        .or(fallback);
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message = format!("{message} (help: {help})");
    }
    Problem {
        file: file.to_owned(),
        position: offset.map(|o| position(text, o)),
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
