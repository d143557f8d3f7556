//! The reconciliation diff of one model: from what the source lists and what
//! serves, which versions to load, which to keep and which to retire. Pure
//! functions; the watcher does the loading and publishing.

use std::collections::BTreeMap;

use crate::core::config::VersionPolicy;

/// What one model needs to serve what its listing says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The versions that should serve: the policy's choice, plus aliased ones.
    pub desired: Vec<u64>,
    /// Desired versions to (re)load: new ones, changed files, or all of them
    /// when the model's config changed.
    pub load: Vec<u64>,
    /// Serving versions no longer desired.
    pub retire: Vec<u64>,
}

impl Plan {
    /// Whether the model is already as it should be.
    pub fn is_empty(&self) -> bool {
        self.load.is_empty() && self.retire.is_empty()
    }
}

/// Versions and the fingerprint of their files.
pub type Fingerprints = BTreeMap<u64, u64>;

/// The plan for a model whose complete versions are `stable`, given its
/// `aliases`, the versions in the table (`serving`, whatever their state),
/// the fingerprints they were loaded from (`applied`), and whether its
/// `config.toml` changed since.
pub fn plan(
    policy: &VersionPolicy,
    stable: &Fingerprints,
    aliases: &BTreeMap<String, u64>,
    serving: &[u64],
    applied: &Fingerprints,
    config_changed: bool,
) -> Plan {
    let available: Vec<u64> = stable.keys().copied().collect();
    // Aliased versions serve too: traffic policies weight them by name.
    let mut desired = policy.select(&available);
    for v in aliases.values() {
        if available.contains(v) && !desired.contains(v) {
            desired.push(*v);
        }
    }
    desired.sort_unstable();
    let load = desired
        .iter()
        .copied()
        .filter(|v| config_changed || applied.get(v) != stable.get(v) || !serving.contains(v))
        .collect();
    let retire = serving
        .iter()
        .copied()
        .filter(|v| !desired.contains(v))
        .collect();
    Plan {
        desired,
        load,
        retire,
    }
}

/// Which of the versions planned for retirement really go. While some desired
/// version is not ready (`desired_ok` false), a version that was ready
/// (`was_ready`) and whose files are still listed (`listed`) keeps serving: a
/// failed load never takes away what served. Returns `(kept, retired)`.
pub fn retirements(
    retire: &[u64],
    desired_ok: bool,
    was_ready: impl Fn(u64) -> bool,
    listed: impl Fn(u64) -> bool,
) -> (Vec<u64>, Vec<u64>) {
    retire
        .iter()
        .partition(|&&v| !desired_ok && was_ready(v) && listed(v))
}

/// Under `latest = N` with fewer than N versions ready, the next versions down
/// that could stand in, newest first: not already in the table (`present`) and
/// not already tried with these files. The caller loads them until N serve.
pub fn stand_ins(
    stable: &Fingerprints,
    applied: &Fingerprints,
    present: impl Fn(u64) -> bool,
) -> Vec<u64> {
    stable
        .keys()
        .rev()
        .copied()
        .filter(|v| !present(*v) && applied.get(v) != stable.get(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fps(v: &[(u64, u64)]) -> Fingerprints {
        v.iter().copied().collect()
    }

    const LATEST1: VersionPolicy = VersionPolicy::Latest(1);

    #[test]
    fn a_new_version_is_loaded_and_the_old_one_retired() {
        let p = plan(
            &LATEST1,
            &fps(&[(1, 10), (2, 20)]),
            &BTreeMap::new(),
            &[1],
            &fps(&[(1, 10)]),
            false,
        );
        assert_eq!(p.desired, [2]);
        assert_eq!(p.load, [2]);
        assert_eq!(p.retire, [1]);
    }

    #[test]
    fn nothing_changed_is_an_empty_plan() {
        let stable = fps(&[(1, 10), (2, 20)]);
        let p = plan(&LATEST1, &stable, &BTreeMap::new(), &[2], &stable, false);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn changed_files_or_config_reload_what_serves() {
        let stable = fps(&[(1, 10), (2, 21)]);
        let applied = fps(&[(1, 10), (2, 20)]);
        let all = VersionPolicy::All;
        let p = plan(&all, &stable, &BTreeMap::new(), &[1, 2], &applied, false);
        assert_eq!((p.load, p.retire), (vec![2], vec![]));
        let p = plan(&all, &stable, &BTreeMap::new(), &[1, 2], &stable, true);
        assert_eq!(p.load, [1, 2], "a new config.toml reloads every version");
    }

    #[test]
    fn an_aliased_version_serves_beside_the_policy_s_choice() {
        let aliases = BTreeMap::from([("champion".to_string(), 1), ("gone".to_string(), 9)]);
        let stable = fps(&[(1, 10), (2, 20)]);
        let p = plan(
            &LATEST1,
            &stable,
            &aliases,
            &[],
            &Fingerprints::new(),
            false,
        );
        assert_eq!(
            p.desired,
            [1, 2],
            "an alias of a missing version adds nothing"
        );
        assert_eq!(p.load, [1, 2]);
    }

    #[test]
    fn a_failed_load_keeps_the_old_version_while_its_files_are_there() {
        let ready = |v| v == 1;
        let listed = |v| v != 3;
        let (kept, retired) = retirements(&[1, 3], false, ready, listed);
        assert_eq!((kept, retired), (vec![1], vec![3]));
        let (kept, retired) = retirements(&[1, 3], true, ready, listed);
        assert_eq!((kept, retired), (vec![], vec![1, 3]));
    }

    #[test]
    fn stand_ins_are_older_versions_not_yet_tried() {
        let stable = fps(&[(1, 10), (2, 20), (3, 30)]);
        let applied = fps(&[(3, 30), (1, 10)]);
        assert_eq!(stand_ins(&stable, &applied, |v| v == 3), [2]);
        assert_eq!(
            stand_ins(&stable, &Fingerprints::new(), |_| false),
            [3, 2, 1]
        );
    }
}
