//! Finished builds leaving memory and the store at exact times ([`crate::farm::history`] applied
//! by [`FarmState::retire`]).

use super::*;
use crate::farm::FarmError;
use crate::farm::history::HistoryPolicy;
use crate::farm::state::{Listed, Retired};
use crate::paging::PageQuery;

fn policy(keep: usize, for_s: u64, retention_s: Option<u64>) -> FarmConfig {
    FarmConfig {
        history: HistoryPolicy {
            keep_finished: keep,
            keep_finished_for: Duration::from_secs(for_s),
            retention: retention_s.map(Duration::from_secs),
        },
        ..config()
    }
}

fn admin() -> Caller {
    Caller {
        name: "ops".into(),
        team: "default".into(),
        admin: true,
    }
}

/// What a listing shows of the script's builds, newest first: `n` held, `n?` only stored.
fn listing(s: &Script) -> Vec<String> {
    let page = s
        .state
        .list(&PageQuery::newest(100), &admin(), Build::clone)
        .unwrap();
    (page.items.iter())
        .map(|l| {
            let n = s.builds.iter().position(|b| *b == l.id()).unwrap();
            match l {
                Listed::Held(_) => n.to_string(),
                Listed::Stored(_) => format!("{n}?"),
            }
        })
        .collect()
}

/// A history pass at `ms`: the evicted and the deleted builds, by submission index.
fn retire(s: &mut Script, ms: u64) -> (Vec<usize>, Vec<usize>) {
    let Retired {
        evicted, deleted, ..
    } = s.state.retire(s.at(ms));
    let index = |v: Vec<BuildId>| -> Vec<usize> {
        (v.iter())
            .map(|id| s.builds.iter().position(|b| b == id).unwrap())
            .collect()
    };
    (index(evicted), index(deleted))
}

fn cancel(s: &mut Script, n: usize, ms: u64) {
    let _ = s.state.cancel(s.builds[n], s.at(ms)).unwrap();
}

#[test]
fn finished_builds_leave_memory_after_the_window_and_the_store_after_the_retention() {
    // Held 10 s after they finish, deleted 20 s after.
    let mut s = Script::new(policy(100, 10, Some(20)));
    for ms in [0, 5_000, 6_000] {
        let _ = s.step(ms, &AMD);
    }
    cancel(&mut s, 0, 0);
    cancel(&mut s, 1, 5_000);
    // Build 2 stays queued: never evicted, never deleted.
    for (ms, evicted, deleted, listed) in [
        (9_999, vec![], vec![], vec!["2", "1", "0"]),
        (10_000, vec![0], vec![], vec!["2", "1", "0?"]),
        (14_999, vec![], vec![], vec!["2", "1", "0?"]),
        (15_000, vec![1], vec![], vec!["2", "1?", "0?"]),
        (19_999, vec![], vec![], vec!["2", "1?", "0?"]),
        (20_000, vec![], vec![0], vec!["2", "1?"]),
        (25_000, vec![], vec![1], vec!["2"]),
        (3_600_000, vec![], vec![], vec!["2"]),
    ] {
        assert_eq!(retire(&mut s, ms), (evicted, deleted), "at {ms} ms");
        assert_eq!(listing(&s), listed, "at {ms} ms");
    }
    assert_eq!(s.state.team_of(s.builds[0]), None);
    assert_eq!(s.state.counts(), (1, 1));
}

#[test]
fn an_evicted_build_keeps_only_its_summary() {
    let mut s = Script::new(policy(100, 0, None));
    let _ = s.step(0, &AMD);
    cancel(&mut s, 0, 1_000);
    assert_eq!(retire(&mut s, 1_000), (vec![0], vec![]));
    let id = s.builds[0];
    assert!(matches!(s.state.get(id), Err(FarmError::UnknownBuild(_))));
    assert!(matches!(
        s.state.events(id, 0),
        Err(FarmError::UnknownBuild(_))
    ));
    assert_eq!(s.state.team_of(id), Some("default"));
    assert_eq!(s.state.counts(), (1, 0));
}

#[test]
fn at_most_keep_finished_are_held_the_oldest_finished_leave_first() {
    let mut s = Script::new(policy(2, 3600, None));
    for n in 0..4u64 {
        let _ = s.step(n * 1_000, &AMD);
    }
    // Finished in the order 2, 0, 3, 1.
    for (ms, n) in [(10_000, 2), (11_000, 0), (12_000, 3), (13_000, 1)] {
        cancel(&mut s, n, ms);
    }
    assert_eq!(retire(&mut s, 13_000), (vec![2, 0], vec![]));
    assert_eq!(listing(&s), ["3", "2?", "1", "0?"]);
    assert_eq!(retire(&mut s, 14_000), (vec![], vec![]));
    let _ = s.step(15_000, &AMD);
    cancel(&mut s, 4, 16_000);
    assert_eq!(retire(&mut s, 16_000), (vec![3], vec![]));
}

#[test]
fn a_success_that_left_memory_is_no_longer_reused_and_a_readmitted_build_is_held_again() {
    use Step::*;
    let mut s = check(
        policy(0, 3600, None),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Accept("x86", "amd64", 1), ""),
            (2_000, Pushed("x86", "amd64", 1), "publish"),
            (3_000, Published(Ok("sha256:list")), "ended Succeeded"),
        ],
    );
    let done = s.build();
    // Still held (the count applies at the next pass): an identical build reuses its images.
    let _ = s.step(4_000, &AMD);
    assert!(s.state.get(s.builds[1]).unwrap().reused.is_some());
    assert_eq!(retire(&mut s, 5_000), (vec![0], vec![]));
    // Gone from memory: the next identical build builds on its own.
    let effects = s.step(6_000, &AMD);
    assert_eq!(s.render(&effects), "assign x86 amd64 #1");
    assert_eq!(s.state.get(s.builds[2]).unwrap().reused, None);
    // Taken back from its record (`manifold publish` of an evicted build), it is held again,
    // its history told by the record.
    s.state.readmit(done.clone(), s.at(8_000));
    assert_eq!(s.state.get(done.id).unwrap(), done);
    let (events, ended) = s.state.events(done.id, 0).unwrap();
    assert!(ended);
    assert_eq!(events.len(), 2, "{events:?}");
}

#[test]
fn a_restore_lists_every_build_and_holds_only_what_it_is_given() {
    use crate::store::BuildSummary;
    let mut before = Script::new(policy(100, 3600, None));
    for ms in [0, 1_000, 2_000] {
        let _ = before.step(ms, &AMD);
    }
    cancel(&mut before, 0, 3_000);
    let records: Vec<Build> = (before.builds.iter())
        .map(|id| before.state.get(*id).unwrap())
        .collect();
    let summaries: Vec<BuildSummary> = records.iter().map(BuildSummary::from).collect();
    // The finished build 0 stays in the store: only the unfinished ones are held.
    let mut s = Script::new(policy(100, 3600, None));
    let _ = s.state.restore(records[1..].to_vec(), summaries, s.at(0));
    s.builds = before.builds.clone();
    assert_eq!(listing(&s), ["2", "1", "0?"]);
    assert_eq!(s.state.counts(), (3, 2));
}
