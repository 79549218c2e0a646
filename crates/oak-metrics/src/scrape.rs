//! Values computed when `/metrics` is read.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::TypedMetric;

/// One label set: (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

enum Samples {
    Gauge(Vec<(Labels, f64)>),
    Counter(Vec<(Labels, u64)>),
    FloatCounter(Vec<(Labels, f64)>),
}

struct Family {
    name: &'static str,
    help: &'static str,
    samples: Samples,
}

/// The families one scrape of a [`live`] collector produced. Names are given without the
/// `_total` a counter gets in the text.
#[derive(Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    /// A gauge family; a family without samples is left out of the text.
    pub fn gauges(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        self.families.push(Family { name, help, samples: Samples::Gauge(samples) });
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.gauges(name, help, vec![(Vec::new(), value)]);
    }

    /// A counter family (monotonic values kept by the tier).
    pub fn counters(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, u64)>) {
        self.families.push(Family { name, help, samples: Samples::Counter(samples) });
    }

    /// A counter family of fractional values (CPU seconds).
    pub fn float_counters(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        self.families.push(Family { name, help, samples: Samples::FloatCounter(samples) });
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.counters(name, help, vec![(Vec::new(), value)]);
    }
}

/// A collector that calls `f` at every scrape.
pub fn live<F>(f: F) -> Box<dyn Collector>
where
    F: Fn(&mut Scrape) + Send + Sync + 'static,
{
    Box::new(Live(f))
}

struct Live<F>(F);

impl<F> std::fmt::Debug for Live<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl<F> Collector for Live<F>
where
    F: Fn(&mut Scrape) + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut scrape = Scrape::default();
        (self.0)(&mut scrape);
        for family in &scrape.families {
            match &family.samples {
                Samples::Gauge(samples) if !samples.is_empty() => {
                    let mut metric = encoder.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
                    for (labels, value) in samples {
                        // Counts print as integers (`3`, not `3.0`), as readers of the old text expect.
                        if value.fract() == 0.0 && value.abs() < 1e15 {
                            metric.encode_family(labels)?.encode_gauge(&(*value as i64))?;
                        } else {
                            metric.encode_family(labels)?.encode_gauge(value)?;
                        }
                    }
                }
                Samples::Counter(samples) if !samples.is_empty() => {
                    let kind = prometheus_client::metrics::counter::Counter::<u64>::TYPE;
                    let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
                    for (labels, value) in samples {
                        let counter = prometheus_client::metrics::counter::ConstCounter::new(*value);
                        counter.encode(metric.encode_family(labels)?)?;
                    }
                }
                Samples::FloatCounter(samples) if !samples.is_empty() => {
                    let kind = prometheus_client::metrics::counter::Counter::<u64>::TYPE;
                    let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
                    for (labels, value) in samples {
                        let counter = prometheus_client::metrics::counter::ConstCounter::new(*value);
                        counter.encode(metric.encode_family(labels)?)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Registry};

    #[test]
    fn live_values_are_read_at_each_scrape_and_empty_families_left_out() {
        let state = std::sync::Arc::new(std::sync::Mutex::new(vec![("RUNNING", 2.0), ("FAILED", 1.0)]));
        let mut registry = Registry::default();
        let seen = state.clone();
        registry.register_collector(live(move |s| {
            let rows = seen.lock().unwrap().iter().map(|(k, v)| (vec![("status", k.to_string())], *v)).collect();
            s.gauges("oakestra_instances", "Instances by status", rows);
            s.counter("oakestra_refused", "Refused", 7);
            s.gauge("oakestra_ratio", "A fraction", 0.25);
            s.float_counters("oakestra_cpu_seconds", "CPU", vec![(vec![("job", "j".to_string())], 1.5)]);
            s.gauges("oakestra_nothing", "Nothing", Vec::new());
        }));
        let text = render(&registry);
        assert!(text.contains("oakestra_instances{status=\"RUNNING\"} 2\n"), "{text}");
        assert!(text.contains("oakestra_instances{status=\"FAILED\"} 1"), "{text}");
        assert!(text.contains("# TYPE oakestra_refused_total counter\noakestra_refused_total 7\n"), "{text}");
        assert!(!text.contains("oakestra_nothing"), "{text}");
        assert!(text.contains("oakestra_ratio 0.25\n"), "{text}");
        assert!(
            text.contains("# TYPE oakestra_cpu_seconds_total counter\noakestra_cpu_seconds_total{job=\"j\"} 1.5\n"),
            "{text}"
        );
        state.lock().unwrap().retain(|(k, _)| *k == "RUNNING");
        let text = render(&registry);
        assert!(!text.contains("FAILED"), "a series whose subject went is gone: {text}");
    }
}
