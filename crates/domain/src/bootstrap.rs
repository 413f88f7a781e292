//! Which configuration a (new) instance should start with. A shared
//! configuration qualifies when every one of its context attributes matches
//! the instance's context and at least [`VALIDATION_MIN_INSTANCES`]
//! distinct instances shared it; among those, the most specific (most
//! matching attributes) wins, validated before candidates, then the most
//! effective.
//!
//! One instance's word is not enough: its `data_points` and effectiveness
//! are what it declares, and a single share with an empty context and a
//! declared million data points used to become every new instance's
//! bootstrap.

use super::model::{Attributes, Configuration, VALIDATION_MIN_INSTANCES};

/// Whether `config` may be offered to other instances (as the bootstrap or
/// an alternative to it): shared by enough distinct instances.
pub fn offered_to_others(config: &Configuration) -> bool {
    config.reporters() >= VALIDATION_MIN_INSTANCES
}

/// The best configuration for `context`, if any qualifies.
pub fn choose_configuration<'c, C: AsRef<Configuration> + 'c>(
    configs: impl IntoIterator<Item = &'c C>,
    context: &Attributes,
) -> Option<&'c C> {
    configs
        .into_iter()
        .filter(|c| offered_to_others(c.as_ref()))
        .filter_map(|c| {
            c.as_ref()
                .context_match(context)
                .map(|specificity| (specificity, c))
        })
        .max_by(|(sa, a), (sb, b)| {
            let (a, b) = (a.as_ref(), b.as_ref());
            sa.cmp(sb)
                .then(a.validated.cmp(&b.validated))
                .then(a.effectiveness.total_cmp(&b.effectiveness))
                .then(a.data_points.cmp(&b.data_points))
                // Deterministic among equals: the smaller id wins.
                .then(b.id.cmp(&a.id))
        })
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConfigShare, ParamValue, Parameters};

    fn config(ctx: &[(&str, &str)], eff: f64, points: u64, instances: &[&str]) -> Configuration {
        let share = ConfigShare {
            context: ctx
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            parameters: Parameters::from([("x".into(), ParamValue::Number(eff))]),
            effectiveness: eff,
            data_points: points,
            recommendation: String::new(),
            alternatives: vec![],
        };
        let mut c = Configuration::new(&share, instances[0], 0);
        for i in &instances[1..] {
            c.record(
                &ConfigShare {
                    data_points: 1,
                    ..share.clone()
                },
                i,
                0,
            );
        }
        c.revalidate(None, 0);
        c
    }

    #[test]
    fn most_specific_then_validated_then_effective() {
        let ctx: Attributes = [
            ("latency".into(), "high".into()),
            ("provider".into(), "claude".into()),
        ]
        .into();
        let generic = config(&[], 0.99, 10, &["a", "b"]);
        let specific = config(&[("latency", "high")], 0.7, 10, &["a", "b"]);
        let specific_validated = config(&[("latency", "high")], 0.6, 200, &["a", "b"]);
        let mismatched = config(&[("latency", "low")], 1.0, 500, &["a", "b"]);
        let all = [
            generic.clone(),
            specific,
            specific_validated.clone(),
            mismatched,
        ];
        let chosen = choose_configuration(&all, &ctx).unwrap();
        assert_eq!(chosen.id, specific_validated.id);
        let only_generic = [generic.clone()];
        assert_eq!(
            choose_configuration(&only_generic, &ctx).unwrap().id,
            generic.id
        );
        let none: [Configuration; 0] = [];
        assert!(choose_configuration(&none, &ctx).is_none());
    }

    #[test]
    fn one_instance_alone_bootstraps_nobody_whatever_it_declares() {
        let ctx: Attributes = [("latency".into(), "high".into())].into();
        let loud = config(&[], 1.0, 1_000_000, &["attacker"]);
        assert!(!offered_to_others(&loud));
        assert!(choose_configuration(std::slice::from_ref(&loud), &ctx).is_none());
        let modest = config(&[], 0.6, 10, &["a", "b"]);
        let both = [loud, modest.clone()];
        assert_eq!(choose_configuration(&both, &ctx).unwrap().id, modest.id);
    }
}
