//! Which runners and slices a process is about: `NAME` or
//! `NAME:SLICE:RANGE`, as `master -r` and `runner --runner` take them.
//!
//! Not here: turning a selection into slices to supervise (`master`).

/// One runner to start, from `-r NAME[:SLICE:RANGE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSpec {
    pub name: String,
    /// `None`: every slice of the runner.
    pub slice: Option<(u32, u32)>,
}

impl RunnerSpec {
    pub fn parse(text: &str) -> Result<RunnerSpec, String> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [name] if !name.is_empty() => Ok(RunnerSpec {
                name: name.to_string(),
                slice: None,
            }),
            [name, s, r] if !name.is_empty() => {
                let (Ok(s), Ok(r)) = (s.parse::<u32>(), r.parse::<u32>()) else {
                    return Err(format!("slice and range must be integers: {text}"));
                };
                if !r.is_power_of_two() || s >= r {
                    return Err(format!("slice must be below range, a power of 2: {text}"));
                }
                Ok(RunnerSpec {
                    name: name.to_string(),
                    slice: Some((s, r)),
                })
            }
            _ => Err(format!("Bad runner spec: {text}")),
        }
    }
}

/// The selections share no part of any runner's hash space: `in` and
/// `in:1:2`, or `in:0:2` and `in:1:4`, would run one slice twice.
pub fn no_overlap(specs: &[RunnerSpec]) -> Result<(), String> {
    let span = |s: &RunnerSpec| {
        s.slice
            .map_or((0u64, 1u64), |(s, r)| (u64::from(s), u64::from(r)))
    };
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[i + 1..] {
            if a.name != b.name {
                continue;
            }
            let ((s1, r1), (s2, r2)) = (span(a), span(b));
            // [s1/r1, (s1+1)/r1) and [s2/r2, (s2+1)/r2), scaled by r1·r2.
            if s1 * r2 < (s2 + 1) * r1 && s2 * r1 < (s1 + 1) * r2 {
                return Err(format!(
                    "{} and {} overlap: one slice would run twice",
                    a.text(),
                    b.text()
                ));
            }
        }
    }
    Ok(())
}

impl RunnerSpec {
    /// As written: `NAME` or `NAME:SLICE:RANGE`.
    pub fn text(&self) -> String {
        match self.slice {
            Some((s, r)) => format!("{}:{s}:{r}", self.name),
            None => self.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_specs() {
        assert_eq!(
            RunnerSpec::parse("in").unwrap(),
            RunnerSpec {
                name: "in".into(),
                slice: None
            }
        );
        assert_eq!(RunnerSpec::parse("in:1:2").unwrap().slice, Some((1, 2)));
        assert_eq!(
            RunnerSpec::parse("a:1").unwrap_err(),
            "Bad runner spec: a:1"
        );
        assert!(RunnerSpec::parse("a:b:c").unwrap_err().contains("integers"));
        assert!(RunnerSpec::parse("a:2:2").is_err());
    }

    #[test]
    fn overlapping_selections() {
        let specs = |l: &[&str]| -> Vec<RunnerSpec> {
            l.iter().map(|t| RunnerSpec::parse(t).unwrap()).collect()
        };
        assert!(no_overlap(&specs(&["in:0:4", "in:1:4", "out:0:4", "in:1:2"])).is_ok());
        assert_eq!(
            no_overlap(&specs(&["in:0:2", "out", "in:1:4"])).unwrap_err(),
            "in:0:2 and in:1:4 overlap: one slice would run twice"
        );
        assert!(no_overlap(&specs(&["in", "in:3:4"])).is_err());
        assert!(no_overlap(&specs(&["in:2:4", "in:1:2"])).is_err());
        assert!(no_overlap(&specs(&["in:0:1", "in:0:1"])).is_err());
    }
}
