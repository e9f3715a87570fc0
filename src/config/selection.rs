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
}
