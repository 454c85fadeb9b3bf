//! kube's autoscaling behavior (`spec.behavior`, with kube's defaults when absent): a
//! recommendation is stabilized against the others of its window (scale down only to the
//! highest of the last 5 minutes, by default), then held to the rate policies (by default
//! up by 4 pods or 100% per 15 s, whichever is more; down by 100% per 15 s).
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pods,
    Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Policy {
    kind: Kind,
    value: i32,
    period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Select {
    Max,
    Min,
    Disabled,
}

/// One direction's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    window: Duration,
    policies: Vec<Policy>,
    select: Select,
}

/// Scaling up and scaling down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    up: Rules,
    down: Rules,
}

fn rules(given: Option<&HPAScalingRules>, defaults: Rules) -> Rules {
    let Some(g) = given else {
        return defaults;
    };
    let policies = g.policies.as_ref().map(|ps| {
        ps.iter()
            .map(|p| Policy {
                kind: if p.type_ == "Pods" {
                    Kind::Pods
                } else {
                    Kind::Percent
                },
                value: p.value,
                period: Duration::from_secs(p.period_seconds.max(1) as u64),
            })
            .collect()
    });
    Rules {
        window: g
            .stabilization_window_seconds
            .map_or(defaults.window, |s| Duration::from_secs(s.max(0) as u64)),
        policies: policies.unwrap_or(defaults.policies),
        select: match g.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            _ => Select::Max,
        },
    }
}

const PERIOD: Duration = Duration::from_secs(15);

impl Behavior {
    pub fn from_spec(spec: Option<&HorizontalPodAutoscalerBehavior>) -> Behavior {
        let up = Rules {
            window: Duration::ZERO,
            policies: vec![
                Policy {
                    kind: Kind::Pods,
                    value: 4,
                    period: PERIOD,
                },
                Policy {
                    kind: Kind::Percent,
                    value: 100,
                    period: PERIOD,
                },
            ],
            select: Select::Max,
        };
        let down = Rules {
            window: Duration::from_secs(300),
            policies: vec![Policy {
                kind: Kind::Percent,
                value: 100,
                period: PERIOD,
            }],
            select: Select::Max,
        };
        Behavior {
            up: rules(spec.and_then(|b| b.scale_up.as_ref()), up),
            down: rules(spec.and_then(|b| b.scale_down.as_ref()), down),
        }
    }
}

/// One autoscaler's memory: its recent recommendations and scale changes.
#[derive(Default, Debug)]
pub struct History {
    recommendations: Vec<(Instant, i32)>,
    ups: Vec<(Instant, i32)>,
    downs: Vec<(Instant, i32)>,
}

/// Why the result differs from the recommendation, for the autoscaler's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    No,
    UpLimit,
    DownLimit,
}

fn changed_within(events: &[(Instant, i32)], now: Instant, period: Duration) -> i32 {
    events
        .iter()
        .filter(|(at, _)| now.duration_since(*at) < period)
        .map(|(_, n)| n)
        .sum()
}

impl History {
    /// kube's stabilization: the recommendation, raised to the lowest of the scale-up window
    /// and lowered to the highest of the scale-down window, never past `current`.
    pub fn stabilize(&mut self, b: &Behavior, now: Instant, current: i32, proposal: i32) -> i32 {
        let keep = b.up.window.max(b.down.window);
        self.recommendations
            .retain(|(at, _)| now.duration_since(*at) <= keep);
        let mut up = proposal;
        let mut down = proposal;
        for (at, r) in &self.recommendations {
            if now.duration_since(*at) <= b.up.window {
                up = up.min(*r);
            }
            if now.duration_since(*at) <= b.down.window {
                down = down.max(*r);
            }
        }
        self.recommendations.push((now, proposal));
        current.max(up).min(down)
    }

    /// The desired count held to the rate policies and to min..max.
    pub fn limit(
        &self,
        b: &Behavior,
        now: Instant,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
    ) -> (i32, Held) {
        let start = |period: Duration| {
            current - changed_within(&self.ups, now, period)
                + changed_within(&self.downs, now, period)
        };
        if desired > current {
            let limit = match b.up.select {
                Select::Disabled => current,
                select => {
                    let proposals = b.up.policies.iter().map(|p| {
                        let from = start(p.period);
                        match p.kind {
                            Kind::Pods => from + p.value,
                            Kind::Percent => {
                                (f64::from(from) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
                            }
                        }
                    });
                    let l = if select == Select::Min {
                        proposals.min()
                    } else {
                        proposals.max()
                    };
                    l.unwrap_or(current).max(current)
                }
            };
            let ceiling = max.min(limit);
            if desired > ceiling {
                return (ceiling, if limit < max { Held::UpLimit } else { Held::No });
            }
        } else if desired < current {
            let limit = match b.down.select {
                Select::Disabled => current,
                select => {
                    let proposals = b.down.policies.iter().map(|p| {
                        let from = start(p.period);
                        match p.kind {
                            Kind::Pods => from - p.value,
                            Kind::Percent => {
                                (f64::from(from) * (1.0 - f64::from(p.value) / 100.0)) as i32
                            }
                        }
                    });
                    let l = if select == Select::Min {
                        proposals.max()
                    } else {
                        proposals.min()
                    };
                    l.unwrap_or(current).min(current)
                }
            };
            let floor = min.max(limit);
            if desired < floor {
                return (
                    floor,
                    if limit > min {
                        Held::DownLimit
                    } else {
                        Held::No
                    },
                );
            }
        }
        (desired, Held::No)
    }

    /// Remembers a scale from `from` to `to` (for the rate policies' periods).
    pub fn scaled(&mut self, now: Instant, from: i32, to: i32) {
        let keep = Duration::from_secs(1800);
        self.ups.retain(|(at, _)| now.duration_since(*at) < keep);
        self.downs.retain(|(at, _)| now.duration_since(*at) < keep);
        if to > from {
            self.ups.push((now, to - from));
        } else if to < from {
            self.downs.push((now, from - to));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_down_waits_for_the_highest_recommendation_of_its_window() {
        let b = Behavior::from_spec(None);
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(h.stabilize(&b, t0, 2, 6), 6);
        // Load drops: the 6 of a minute ago still holds.
        assert_eq!(h.stabilize(&b, t0 + Duration::from_secs(60), 6, 1), 6);
        // Five minutes later it is forgotten.
        assert_eq!(h.stabilize(&b, t0 + Duration::from_secs(400), 6, 1), 1);
    }

    #[test]
    fn scale_up_is_held_to_four_pods_or_double_per_period() {
        let b = Behavior::from_spec(None);
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(h.limit(&b, t0, 1, 20, 1, 50), (5, Held::UpLimit));
        assert_eq!(h.limit(&b, t0, 10, 40, 1, 50), (20, Held::UpLimit));
        assert_eq!(h.limit(&b, t0, 10, 40, 1, 15), (15, Held::No));
        // Within the same period the start is where the period began.
        h.scaled(t0, 1, 5);
        assert_eq!(
            h.limit(&b, t0 + Duration::from_secs(5), 5, 20, 1, 50),
            (5, Held::UpLimit)
        );
        assert_eq!(
            h.limit(&b, t0 + Duration::from_secs(16), 5, 20, 1, 50),
            (10, Held::UpLimit)
        );
    }

    #[test]
    fn disabled_directions_do_not_move() {
        let spec: HorizontalPodAutoscalerBehavior = serde_json::from_value(serde_json::json!({
            "scaleDown": {"selectPolicy": "Disabled"}
        }))
        .expect("a behavior");
        let b = Behavior::from_spec(Some(&spec));
        let h = History::default();
        assert_eq!(
            h.limit(&b, Instant::now(), 5, 1, 1, 10),
            (5, Held::DownLimit)
        );
    }
}
