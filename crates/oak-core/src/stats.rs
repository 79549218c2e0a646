//! Latency samples with quantiles, for the placement-time figures the benchmarks and
//! `/metrics` report. Keeps the most recent `capacity` samples.

#[derive(Debug, Clone)]
pub struct Samples {
    values: Vec<u64>,
    next: usize,
    capacity: usize,
    total: u64,
}

impl Samples {
    pub fn new(capacity: usize) -> Self {
        Samples { values: Vec::new(), next: 0, capacity: capacity.max(1), total: 0 }
    }

    pub fn record(&mut self, value: u64) {
        self.total += 1;
        if self.values.len() < self.capacity {
            self.values.push(value);
        } else {
            self.values[self.next] = value;
            self.next = (self.next + 1) % self.capacity;
        }
    }

    /// Samples recorded since creation (not only those kept).
    pub fn len(&self) -> usize {
        self.total as usize
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `q`-quantile (nearest rank) of the kept samples; 0 when there are none.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64
    }
}

#[cfg(test)]
mod tests {
    use super::Samples;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut s = Samples::new(1000);
        assert_eq!(s.quantile(0.5), 0.0);
        for v in 1..=100 {
            s.record(v);
        }
        assert_eq!(s.quantile(0.5), 50.0);
        assert_eq!(s.quantile(0.99), 99.0);
        assert_eq!(s.quantile(1.0), 100.0);
        assert_eq!(s.len(), 100);
    }

    #[test]
    fn keeps_only_the_latest_samples() {
        let mut s = Samples::new(10);
        for v in 0..100 {
            s.record(v);
        }
        assert_eq!(s.quantile(0.0), 90.0);
        assert_eq!(s.len(), 100);
    }
}
