use std::time::Duration;

use time::OffsetDateTime;

use super::*;

const NOW: i64 = 1_800_000_000;

/// A node and an identity with a steady history: nothing fires.
fn steady() -> RiskFacts {
    RiskFacts {
        node: Some(Rates {
            last_minute: 1,
            last_hour: 30,
            baseline: 23 * 30,
        }),
        identity: Rates {
            last_minute: 0,
            last_hour: 2,
            baseline: 46,
        },
        node_identities_last_hour: 3,
        identity_issued_before: true,
        node_issued_identity_before: true,
        identity_key_types: vec!["P-256".to_owned()],
        identity_longest_lifetime: Some(Duration::from_secs(3600)),
        identity_blocked: false,
        request_recorded: false,
    }
}

fn input(facts: &RiskFacts) -> RiskInput<'_> {
    let now = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
    RiskInput {
        ttl: Some(Duration::from_secs(3600)),
        key_type: KeyType::EcdsaP256,
        node_cert_not_before: Some(now - Duration::from_secs(3600)),
        now,
        facts,
    }
}

fn signals(facts: &RiskFacts) -> Vec<Signal> {
    assess(&RiskConfig::default(), &input(facts)).signals
}

#[test]
fn a_steady_request_is_low_with_no_signal() {
    let a = assess(&RiskConfig::default(), &input(&steady()));
    assert_eq!(a, RiskAssessment::none());
}

#[test]
fn a_minute_spike_needs_the_minimum_and_the_factor() {
    let mut facts = steady();
    facts.node = Some(Rates {
        last_minute: 18,
        last_hour: 30,
        baseline: 0,
    });
    // 19 with this one: under the minimum of 20.
    assert_eq!(signals(&facts), vec![]);
    facts.node.as_mut().unwrap().last_minute = 19;
    assert_eq!(signals(&facts), vec![Signal::NodeRateSpike1m]);
    // A node that always asks 5 a minute: 20 is only 4 times its baseline.
    facts.node.as_mut().unwrap().baseline = 23 * 60 * 5;
    facts.node.as_mut().unwrap().last_hour = 300;
    assert_eq!(signals(&facts), vec![]);
    // 50 is 10 times it.
    facts.node.as_mut().unwrap().last_minute = 49;
    assert_eq!(signals(&facts), vec![Signal::NodeRateSpike1m]);
}

#[test]
fn an_hour_spike_is_against_the_hourly_baseline() {
    let mut facts = steady();
    facts.identity = Rates {
        last_minute: 0,
        last_hour: 199,
        baseline: 23 * 20,
    };
    assert_eq!(signals(&facts), vec![Signal::IdentityRateSpike1h]);
    facts.identity.baseline = 23 * 21;
    assert_eq!(signals(&facts), vec![]);
    facts.identity.last_hour = 198;
    facts.identity.baseline = 0;
    assert_eq!(signals(&facts), vec![]);
}

#[test]
fn identity_minute_spike_fires_for_renewals_too() {
    let mut facts = steady();
    facts.node = None;
    facts.identity.last_minute = 40;
    assert_eq!(signals(&facts), vec![Signal::IdentityRateSpike1m]);
}

#[test]
fn first_issuance_and_first_from_node() {
    let mut facts = steady();
    facts.identity_issued_before = false;
    facts.node_issued_identity_before = false;
    facts.identity_key_types.clear();
    facts.identity_longest_lifetime = None;
    assert_eq!(
        signals(&facts),
        vec![Signal::FirstIssuance, Signal::FirstFromNode]
    );
    // A renewal has no node: only the identity's history counts.
    facts.node = None;
    assert_eq!(signals(&facts), vec![Signal::FirstIssuance]);
}

#[test]
fn many_identities_from_one_node() {
    let mut facts = steady();
    facts.node_identities_last_hour = 49;
    assert_eq!(signals(&facts), vec![]);
    facts.node_identities_last_hour = 50;
    assert_eq!(signals(&facts), vec![Signal::ManyIdentities]);
}

#[test]
fn unusual_ttl_and_key_type() {
    let facts = steady();
    let mut i = input(&facts);
    i.ttl = Some(Duration::from_secs(4 * 3600));
    assert!(assess(&RiskConfig::default(), &i).signals.is_empty());
    i.ttl = Some(Duration::from_secs(4 * 3600 + 1));
    i.key_type = KeyType::Ed25519;
    assert_eq!(
        assess(&RiskConfig::default(), &i).signals,
        vec![Signal::UnusualTtl, Signal::UnusualKeyType]
    );
    // No ttl asked: the policy maximum, which is not the caller's doing.
    i.ttl = None;
    assert_eq!(
        assess(&RiskConfig::default(), &i).signals,
        vec![Signal::UnusualKeyType]
    );
}

#[test]
fn an_old_node_certificate() {
    let facts = steady();
    let mut i = input(&facts);
    let max = RiskConfig::default().node_cert_max_age;
    i.node_cert_not_before = Some(i.now - max);
    assert!(assess(&RiskConfig::default(), &i).signals.is_empty());
    i.node_cert_not_before = Some(i.now - max - Duration::from_secs(1));
    assert_eq!(
        assess(&RiskConfig::default(), &i).signals,
        vec![Signal::NodeCertOld]
    );
}

#[test]
fn tiers_at_their_boundaries() {
    let config = RiskConfig::default();
    assert_eq!(config.tier(0), RiskTier::Low);
    assert_eq!(config.tier(29), RiskTier::Low);
    assert_eq!(config.tier(30), RiskTier::Elevated);
    assert_eq!(config.tier(69), RiskTier::Elevated);
    assert_eq!(config.tier(70), RiskTier::High);
    assert_eq!(config.tier(100), RiskTier::High);
}

#[test]
fn weights_add_up_and_cap_at_100() {
    let mut facts = steady();
    facts.node = Some(Rates {
        last_minute: 500,
        last_hour: 500,
        baseline: 0,
    });
    facts.node_identities_last_hour = 60;
    let a = assess(&RiskConfig::default(), &input(&facts));
    assert_eq!(
        a.signals,
        vec![
            Signal::NodeRateSpike1m,
            Signal::NodeRateSpike1h,
            Signal::ManyIdentities
        ]
    );
    assert_eq!((a.score, a.tier), (100, RiskTier::High));
    let mut config = RiskConfig::default();
    config.weights.insert(Signal::NodeRateSpike1m, 5);
    config.weights.insert(Signal::NodeRateSpike1h, 0);
    config.weights.insert(Signal::ManyIdentities, 25);
    let a = assess(&config, &input(&facts));
    assert_eq!((a.score, a.tier), (30, RiskTier::Elevated));
}

#[test]
fn names_round_trip() {
    for signal in Signal::ALL {
        assert_eq!(Signal::parse(signal.as_str()), Some(signal));
    }
    for tier in RiskTier::ALL {
        assert_eq!(RiskTier::parse(tier.as_str()), Some(tier));
    }
    let a = RiskAssessment {
        score: 50,
        tier: RiskTier::Elevated,
        signals: vec![Signal::FirstIssuance, Signal::ManyIdentities],
    };
    assert_eq!(a.signals_text(), "first_issuance,many_identities");
    assert_eq!(RiskAssessment::parse_signals(&a.signals_text()), a.signals);
    assert_eq!(RiskAssessment::parse_signals(""), vec![]);
    assert_eq!(
        a.to_string(),
        "risk 50 (elevated): first_issuance,many_identities"
    );
}

#[test]
fn a_burst_inside_one_minute_is_counted_exactly() {
    // 25 requests in the current minute, 30 seconds into it.
    let now = NOW - NOW % 60 + 30;
    let rates = Rates::from_buckets(now, &[(now / 60, 25)], &[(now / 3600, 25)]);
    assert_eq!(rates.last_minute, 25);
    assert_eq!(rates.last_hour, 25);
    assert_eq!(rates.baseline, 0);
}

#[test]
fn a_partly_covered_bucket_counts_in_proportion() {
    // 20 seconds into the minute: the window reaches 40 of the previous minute's 60 seconds.
    let now = NOW - NOW % 3600 + 20;
    let minute = now / 60;
    let rates = Rates::from_buckets(now, &[(minute - 1, 30), (minute, 5)], &[]);
    assert_eq!(rates.last_minute, 5 + 20);
    assert_eq!(rates.last_hour, 35);
    // The minute 61 minutes back is in the hour only for its last 20 seconds.
    let rates = Rates::from_buckets(now, &[(minute - 60, 60), (minute - 61, 60)], &[]);
    assert_eq!(rates.last_hour, 40);
    assert_eq!(rates.last_minute, 0);
}

#[test]
fn the_baseline_is_the_23_hours_before_the_last_one() {
    // 15 minutes into the hour; 100 requests in each hour of the last day and more.
    let now = NOW - NOW % 3600 + 900;
    let hour = now / 3600;
    let hours: Vec<Bucket> = (hour - 26..=hour).map(|h| (h, 100)).collect();
    let rates = Rates::from_buckets(now, &[], &hours);
    assert_eq!(rates.baseline, 2300);
    // A future bucket (the clock went back) counts nowhere.
    let rates = Rates::from_buckets(now, &[(now / 60 + 5, 9)], &[(hour + 1, 9)]);
    assert_eq!(rates, Rates::default());
}
