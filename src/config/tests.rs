//! `Config`'s unit tests (config/mod.rs): errors, defaults, layers.

use super::*;
use std::time::Duration;

fn err(text: &str) -> String {
    Config::from_text(text, Some(Path::new("/x/m.toml")))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn defaults_have_mailmans_runners_in_order() {
    let c = Config::from_text("", Some(Path::new("/x/m.toml"))).unwrap();
    let names: Vec<_> = c.runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[0], "archive");
    assert_eq!(names.len(), 15);
    let started = c.runners.iter().filter(|r| r.start).count();
    assert_eq!(started, 12);
    assert_eq!(c.mailman.var_dir, defaults::default_var_dir());
    assert_eq!(c.mailman.stop_timeout, Dur(Duration::from_secs(5)));
}

#[test]
fn runner_default_is_inherited_and_overridden() {
    let c = Config::from_text(
        "[runner.default]\nmax_restarts = 3\nenv = { A = \"1\" }\n[runner.in]\ninstances = 2\nenv = { B = \"2\" }\n[runner.extra]\nsleep_time = \"250ms\"\n",
        Some(Path::new("/x/m.toml")),
    )
    .unwrap();
    let r = c.runner("in").unwrap();
    assert_eq!((r.instances, r.max_restarts), (2, 3));
    assert_eq!(r.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(r.env.get("B").map(String::as_str), Some("2"));
    let e = c.runner("extra").unwrap();
    assert_eq!(e.sleep_time.0, Duration::from_millis(250));
    assert!(e.start);
    assert_eq!(c.runners.last().unwrap().name, "extra");
}

#[test]
fn errors_carry_file_line_col() {
    assert_eq!(
        err("[runner.in]\ninstances = 3\n"),
        "/x/m.toml:2:13: Runner \"in\", not a power of 2: 3"
    );
    assert!(err("[mailman]\nbogus = 1\n").starts_with("/x/m.toml:2:1: unknown field `bogus`"));
    assert!(
        err("[mailman]\nstop_timeout = \"5x\"\n").starts_with("/x/m.toml:2:16: invalid duration")
    );
    assert!(
        err("[runner.in]\ncommand = []\n")
            .starts_with("/x/m.toml:2:11: Runner \"in\": command must not be empty")
    );
    assert!(err("[runner.in]\nstart = \"yes\"\n").starts_with("/x/m.toml:2:9: "));
    assert!(err("[mailman\n").starts_with("/x/m.toml:1:"));
    assert!(err("[runner.\"a:b\"]\n").contains("invalid runner name"));
}

#[test]
fn queue_keys() {
    let c = Config::from_text("", Some(Path::new("/x/m.toml"))).unwrap();
    let next = |n: &str| c.runner(n).unwrap().next.clone();
    assert_eq!(next("in").as_deref(), Some("pipeline"));
    assert_eq!(next("virgin").as_deref(), Some("pipeline"));
    assert_eq!(next("pipeline").as_deref(), Some("out"));
    assert_eq!(next("retry").as_deref(), Some("out"));
    assert_eq!(next("out"), None);
    assert_eq!(
        c.runner("retry").unwrap().sleep_time.0,
        Duration::from_secs(900)
    );
    assert!(c.runner("out").unwrap().handler.is_empty());
    assert!(!c.runner("rest").unwrap().has_queue());

    let c = Config::from_text(
        "[runner.in]\nnext = \"\"\nhandler = [\"/bin/cat\", \"{entry}\"]\n",
        Some(Path::new("/x/m.toml")),
    )
    .unwrap();
    let r = c.runner("in").unwrap();
    assert_eq!(r.next, None, "\"\" turns the built-in next off");
    assert_eq!(r.handler, ["/bin/cat", "{entry}"]);
    let again = Config::from_text(&c.to_toml(), Some(Path::new("/x/m.toml"))).unwrap();
    assert_eq!(again.runner("in").unwrap().next, None);
    assert_eq!(
        again.runner("pipeline").unwrap().next.as_deref(),
        Some("out")
    );

    assert_eq!(
        err("[runner.in]\nnext = \"nope\"\n"),
        "/x/m.toml: Runner \"in\": next queue \"nope\" is not a queue runner"
    );
    assert_eq!(
        err("[runner.in]\nnext = \"rest\"\n"),
        "/x/m.toml: Runner \"in\": next queue \"rest\" is not a queue runner"
    );
    assert_eq!(
        err("[runner.in]\nnext = \"in\"\n"),
        "/x/m.toml: Runner \"in\": next must be another queue"
    );
    assert_eq!(
        err("[runner.in]\nnext = \"a/b\"\n"),
        "/x/m.toml:2:8: Runner \"in\": invalid next queue \"a/b\""
    );
    assert_eq!(
        err("[runner.in]\nhandler = [\"\"]\n"),
        "/x/m.toml:2:11: Runner \"in\": handler must not start with an empty program"
    );
}

#[test]
fn effective_config_round_trips() {
    let c =
        Config::from_text("[runner.in]\ninstances = 4\n", Some(Path::new("/x/m.toml"))).unwrap();
    let again = Config::from_text(&c.to_toml(), Some(Path::new("/x/m.toml"))).unwrap();
    assert_eq!(again.runner("in").unwrap().instances, 4);
    assert_eq!(again.runners.len(), c.runners.len());
}
